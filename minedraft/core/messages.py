"""The drafter protocol: typed messages over a ZeroMQ REQ/REP socket, msgpack-encoded.

One request, one reply. Only token ids cross the channel (no probabilities, no text), so the
drafter may run on another host. The channel is not authenticated: bind it to loopback or a
private interface.

    Hello                      -> HelloReply (vocabulary fingerprint, drafter instance id)
    Draft(k, reqs, free, ingest) -> DraftReply (k greedy draft ids per request not ingested)
    Stop                       -> StopReply
    anything malformed         -> ErrorReply

`Draft.reqs` maps a request id to `Tokens(start, ids)`: the request's verified tokens from
position `start` on (the tokens the drafter has not seen yet). A drafter whose history for that
request is shorter than `start` (a new drafter instance, or one that lost it) cannot draft it and
names it in `DraftReply.resync`; the scheduler then sends the whole sequence next time.
"""

from __future__ import annotations

import hashlib

import msgspec


class Tokens(msgspec.Struct, array_like=True):
    """A slice of a request's token sequence: ids from position `start` on."""
    start: int  # position of ids[0] in the request's sequence (prompt + output)
    ids: list[int]


class Hello(msgspec.Struct, tag="hello"):
    """Who are you? Answered with HelloReply."""
    pass


class Draft(msgspec.Struct, tag="draft"):
    """One draft round: draft k tokens for each request in `reqs` (after appending its new tokens),
    forget the requests in `free`, and only take in (prefill) those in `ingest`."""
    k: int  # draft tokens per request
    reqs: dict[str, Tokens]  # request id -> newly verified tokens
    free: list[str] = []  # request ids the drafter may forget (finished or aborted)
    ingest: list[str] = []  # ids in `reqs` to take in (prefill) without drafting: new prompts


class Stop(msgspec.Struct, tag="stop"):
    """End the drafter process (after replying)."""
    pass


class HelloReply(msgspec.Struct, tag="hello_reply"):
    """The drafter's vocabulary fingerprint, instance id (new at every start), context length, pid
    and backend."""
    vocab: str  # `vocab_fingerprint` of the drafter's tokenizer
    instance: str  # changes whenever a drafter process starts
    max_model_len: int
    pid: int
    backend: str  # "lean" or "vllm"


class DraftReply(msgspec.Struct, tag="draft_reply"):
    """A round's drafts, its time (the drafter's wall time and its forward passes, ms), the
    requests it could not draft for lack of history (resync), and how many histories it holds."""
    drafts: dict[str, list[int]]  # request id -> up to k draft ids
    draft_ms: float  # the drafter's wall time for the round
    forward_ms: float = 0.0  # of which the model's own forward passes
    forwards: int = 0  # forward passes in the round
    resync: list[str] = []  # request ids whose history the drafter lacks
    holding: int = 0  # requests whose history the drafter holds after the round


class StopReply(msgspec.Struct, tag="stop_reply"):
    """The drafter is stopping."""
    pass


class ErrorReply(msgspec.Struct, tag="error"):
    """The request could not be served (malformed, or the round failed); the drafter keeps serving."""
    error: str


DrafterRequest = Hello | Draft | Stop
DrafterReply = HelloReply | DraftReply | StopReply | ErrorReply

_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(DrafterRequest)
_reply_decoder = msgspec.msgpack.Decoder(DrafterReply)


def encode(msg: msgspec.Struct) -> bytes:
    """Message -> msgpack bytes."""
    return _encoder.encode(msg)


def decode_request(data: bytes) -> Hello | Draft | Stop:
    """Bytes from the scheduler -> a request message; raises msgspec.DecodeError or
    msgspec.ValidationError on anything malformed."""
    return _request_decoder.decode(data)


def decode_reply(data: bytes) -> HelloReply | DraftReply | StopReply | ErrorReply:
    """Bytes from the drafter -> a reply message; raises like `decode_request`."""
    return _reply_decoder.decode(data)


def vocab_fingerprint(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary (anything with `get_vocab()`), compared at
    start-up to refuse a drafter whose tokens mean something else than the target's."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]
