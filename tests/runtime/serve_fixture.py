"""Test-only: an `ember serve` app in a background thread, on a loopback socket of an ephemeral port."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any


@contextmanager
def running_server(path: Any, api_key: str | None = None, **engine_kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Yields (base url, AsyncEngine); stops the server and the engine on exit."""
    import uvicorn

    from ember.runtime.serving.async_engine import AsyncEngine
    from ember.runtime.serving.server import create_app

    engine = AsyncEngine.load(path, **engine_kwargs)
    app = create_app(engine, api_key=api_key, on_shutdown=engine.shutdown)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                           limit_concurrency=1000, backlog=1024))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", engine
    finally:
        server.should_exit = True
        thread.join(15)
        engine.shutdown()
        sock.close()
