"""Readers of users' sequence files, one module per format: long CSV (table.py) and the UCR
archive's text formats (ucr.py), the sktime/aeon .ts format (ts.py) and the archive's sets by
name (archive.py), JSON (jsonfile.py), and .npy/.npz arrays (arrays.py); common.py holds what
they share. Each gives float32 [T, D] sequences (D >= 1 features, T >= 2 points) and the labels
as the file writes them; spiralctl.inputs picks the reader for an input."""
