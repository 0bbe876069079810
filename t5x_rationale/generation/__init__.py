"""Generation at scale: batched, sharded, resumable sampling over a dataset into JSONL shards."""
