"""Data sources: each module turns one kind of source into an ImageSet."""
