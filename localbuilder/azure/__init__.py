"""Azure distribution: the sparse page-blob uploader (and, later, managed image / gallery outputs)."""
