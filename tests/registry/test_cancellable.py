"""The httpx/httpcore cancellation patch (cancellable.py): it reaches the pools it must, and says when it cannot.

Prompt cancellation itself (a blocked read ends when the scope is cancelled) is tested end to
end in tests/pipeline/test_cancel.py.
"""

from __future__ import annotations

import httpx

from converter.registry.cancellable import _CancellableBackend, make_cancellable


def test_every_pool_of_a_client_gets_the_cancellable_backend() -> None:
    with httpx.Client(mounts={"http://proxied.example": httpx.HTTPTransport()}) as http:
        assert make_cancellable(http)
        pools = [http._transport._pool, *(t._pool for t in http._mounts.values()  # type: ignore[attr-defined]
                                          if t is not None)]
        assert len(pools) == 2
        assert all(isinstance(p._network_backend, _CancellableBackend) for p in pools)
        assert make_cancellable(http)  # idempotent: not wrapped twice
        assert not isinstance(pools[0]._network_backend._inner, _CancellableBackend)


def test_an_unknown_transport_is_reported_not_patched() -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as http:
        assert not make_cancellable(http)
        assert http.get("http://x.example/").status_code == 200
