"""Build Flower Messages and Contexts by hand, as the SuperLink and SuperNode would."""

import time

from flwr.app import Context, Error, Message, Metadata, RecordDict

RUN_ID = 7
SERVER_NODE_ID = 1


def message(
    content: RecordDict | None = None,
    *,
    src: int = SERVER_NODE_ID,
    dst: int,
    message_type: str = "train",
    error: Error | None = None,
    message_id: str = "m",
    reply_to: str = "",
) -> Message:
    """A Message with complete metadata; `error` instead of `content` for a failed reply."""
    metadata = Metadata(
        run_id=RUN_ID,
        message_id=message_id,
        src_node_id=src,
        dst_node_id=dst,
        reply_to_message_id=reply_to,
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    if error is not None:
        return Message(error, metadata=metadata)
    return Message(content, metadata=metadata)


def reply(to: Message, content: RecordDict | None = None, error: Error | None = None) -> Message:
    """The reply node `to.dst` would send to `to`."""
    return message(
        content,
        src=to.metadata.dst_node_id,
        dst=to.metadata.src_node_id,
        message_type=to.metadata.message_type,
        error=error,
        reply_to=to.metadata.message_id,
    )


def context(node_config: dict, run_config: dict | None = None, node_id: int = 11) -> Context:
    """A SuperNode's Context for one run, with empty state."""
    return Context(
        run_id=RUN_ID,
        node_id=node_id,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config or {},
    )


class NodesGrid:
    """The one Grid call Flower's FedAvg sampling makes, answering with fixed node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        """The connected nodes."""
        return list(self.node_ids)
