"""How export JSON is streamed: ijson with a read buffer large enough for huge tokens.

yajl (ijson's C backend) grows a token that spans reads by appending each read to it, so
a single string of N bytes costs O(N² / buffer): with ijson's 64 KiB default an 80 MB
base64 image in a LabelMe or Label Studio file took minutes. An 8 MiB buffer makes that
a second or two while the memory held stays a few megabytes per open file."""

from __future__ import annotations

JSON_BUFFER = 8 << 20
