"""The report kit: HTML page, plots and galleries shared by every task."""
