"""Serving many requests on one loaded artifact: continuous batching over the paged KV cache (`scheduler`, `core`),
per-request async token streams (`async_engine`), and the OpenAI-compatible HTTP server (`server`, needs the
`[serve]` extra). Nothing here imports the compiler side."""
