"""``hovle serve``: an OpenAI-compatible chat server with continuous batching.

- ``batch_cache``: joining, dropping and compacting the KV-cache rows of running requests;
- ``engine``: the one thread that owns the model and steps every running request together;
- ``messages``: OpenAI chat messages and images -> a prompt, under the server's limits;
- ``app``: the HTTP API (FastAPI) and the chat page.
"""
