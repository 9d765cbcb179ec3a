"""The read step: loose files (files) and shards (shards, one module per format); each input one item."""
