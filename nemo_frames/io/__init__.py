"""Reading and writing shards and tables: WebDataset tars, Parquet, byte access by locator."""
