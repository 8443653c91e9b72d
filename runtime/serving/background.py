"""The HTTP server in a background thread of this process, on a socket bound here (port 0: an ephemeral one):
for apps that embed the server, and for tests. `ember serve` runs uvicorn in the main thread instead."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any


@contextmanager
def running_server(path: Any, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                   **engine_kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Load the artifact at `path` (AsyncEngine.load's keywords) and serve it; yields (base url, AsyncEngine).
    Stops the server and the engine on exit."""
    import uvicorn

    from .async_engine import AsyncEngine
    from .server import create_app

    engine = AsyncEngine.load(path, **engine_kwargs)
    app = create_app(engine, api_key=api_key, on_shutdown=engine.shutdown)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
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
        yield f"http://{host}:{port}", engine
    finally:
        server.should_exit = True
        thread.join(15)
        engine.shutdown()
        sock.close()
