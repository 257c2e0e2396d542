"""The committed generated protobuf modules are exactly what `python -m proto.generate` makes."""

from __future__ import annotations

from pathlib import Path

from proto import generate


def test_generated_modules_match_a_fresh_generation(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in generate.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in generate.generated_files()}
    assert fresh, "protoc generated nothing"
    assert sorted(committed) == sorted(fresh), "run `python -m proto.generate`"
    for name, text in fresh.items():
        assert committed[name] == text, f"proto/{name} is stale: run `python -m proto.generate`"


def test_every_proto_file_has_its_modules() -> None:
    names = {p.name for p in generate.generated_files()}
    for source in generate.proto_files():
        assert f"{source.stem}_pb2.py" in names
        assert f"{source.stem}_pb2_grpc.py" in names


def test_stubs_import_as_the_proto_package() -> None:
    from proto import telemetry_pb2, telemetry_pb2_grpc, update_pb2

    assert telemetry_pb2.DESCRIPTOR.package == "fedq.telemetry.v1"
    assert update_pb2.DESCRIPTOR.package == "fedq.update.v1"
    assert "CompressedUpdate" in update_pb2.DESCRIPTOR.message_types_by_name
    methods = telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].methods_by_name
    assert set(methods) == {
        "StartRun",
        "ReportRound",
        "FinishRun",
        "Heartbeat",
    }
    assert hasattr(telemetry_pb2_grpc, "TelemetryStub")
