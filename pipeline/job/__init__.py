"""The Beam job: options, read (files, shards), decode, label (RunInference), write, resume, summary."""
