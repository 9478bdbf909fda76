"""Reading data sources into labelled samples, splitting them, decoding and augmenting images."""
