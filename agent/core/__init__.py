"""Pure values and decisions: no files, no sockets, no processes, no API calls."""
