"""The input formats `ray_asr.sources` plans and reads, one module each, plus what they share.

`rows` holds the types every format uses (`Shard`, `SourceError`, `RAW_SCHEMA`) and the helpers that make a
raw row; `lines` splits and reads line-oriented files, plain or gzipped. The others are one format each:
`audiofolder` (HF `metadata.csv`/`.jsonl`), `kaldi` (Kaldi/ESPnet data dirs), `lhotse` (cut sets and
recordings + supervisions) and `hf_stream` (`hf://` datasets). `ray_asr.sources` tells them apart and is
the only module callers import; shard sizes come from its constants, passed in at plan time.
"""
