"""The run folder: file names, typed records (one reader per file), CSV and event-line files, embeddings, the run catalog."""
