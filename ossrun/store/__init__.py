"""The store wing: which models exist, where their files are, and how they get onto disk.

- :mod:`ossrun.store.registry` — ``models.toml``, shipped and the user's own, validated
- :mod:`ossrun.store.local` — each registry model's copies on disk and whether they can be used
- :mod:`ossrun.store.resolve` — a MODEL argument (name, alias, path, ``demo``) to a file to load
- :mod:`ossrun.store.pull` — ``ossrun pull``: the published GGUF, or safetensors converted here
- :mod:`ossrun.store.hub` — the Hugging Face hub through ``huggingface_hub``: list, download, resume (the
  only module that reaches the network)
- :mod:`ossrun.store.hub_cache` — the Hugging Face cache on disk: snapshots, blobs, partial downloads,
  free space, hash checks, deletion
- :mod:`ossrun.store.integrity` — file hashes against the hub's, and the record of files checked
- :mod:`ossrun.store.demo` — the demo model, built from the compact checkpoint ossrun ships
"""
