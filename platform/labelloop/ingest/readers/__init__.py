"""One reader per source format: a pure function from a path to SourceRecords."""
