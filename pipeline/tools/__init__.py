"""What reads a job's output: index, search, report, show, export (faiss only here, through extras)."""
