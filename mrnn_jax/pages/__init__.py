"""Pages: the HTML pages of a run, its captions and its retrieval results."""
