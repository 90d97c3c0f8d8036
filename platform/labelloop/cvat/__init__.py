"""Everything labelloop knows about CVAT: reading and writing 'CVAT for images 1.1' XML and
pushing a round to a CVAT server."""
