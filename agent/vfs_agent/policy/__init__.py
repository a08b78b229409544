"""The policy: its types, its file format and validation, its layers and how they are read,
and its compiled form."""
