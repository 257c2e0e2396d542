"""`fedq data check`: read a client's data source as a SuperNode would, and say what it holds.

The same reading and checks as a ClientApp's (fedq/datasources.py), offline: a user finds
out before a run whether the data fits the model.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from fedq.datasources import describe, load_source, parse_data_source
from fedq.models import DEFAULT_NUM_CLASSES, ModelSpec, parse_input_shape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A client's own data: check that it fits the run's model.",
)
console = Console(soft_wrap=True)


@app.command()
def check(
    source: Annotated[
        str,
        typer.Argument(help="csv:PATH, npz:PATH, imagefolder:DIR, hf:DIR, python:module:fn"),
    ],
    model: Annotated[str, typer.Option(help="The run's model.")] = "mlp",
    input_shape: Annotated[str, typer.Option(help="One example: F, H,W or C,H,W.")] = "8,8",
    num_classes: Annotated[int, typer.Option(help="Classes.")] = DEFAULT_NUM_CLASSES,
    label_column: Annotated[str, typer.Option(help="csv/hf: the label column.")] = "label",
    feature_column: Annotated[
        str | None, typer.Option(help="hf: the feature column (default: image, else the rest).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Read SOURCE for the given model: examples, shape and class counts, or the reason.

    Exits with code 2 and one line saying what is wrong when the data does not fit.
    """
    spec = ModelSpec(model, parse_input_shape(input_shape), num_classes)
    data = load_source(
        parse_data_source(source, label_column=label_column, feature_column=feature_column),
        spec,
    )
    found = describe(data)
    if as_json:
        print(json.dumps(found))
        return
    classes = ", ".join(f"{c}: {n}" for c, n in found["classes"].items())
    console.print(
        f"{source}: {found['examples']} examples of shape "
        f"{'x'.join(map(str, found['shape']))}, {len(found['classes'])} classes ({classes})"
    )
