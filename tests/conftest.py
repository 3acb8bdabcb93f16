import os

# A hub id must fail at once instead of after a minute of retries: tests never download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A test that scores the sealed splits writes its ledger line here, never to the committed docs/ledger.jsonl.
if not os.environ.get("FCDPO_LEDGER"):
    import tempfile

    os.environ["FCDPO_LEDGER"] = os.path.join(tempfile.mkdtemp(prefix="fcdpo-ledger-"), "ledger.jsonl")
