"""Everything labelloop knows about Label Studio: the API client, conversion between its
results and canonical shapes, label configs, the export reader, live sync, push and
webhook registration."""
