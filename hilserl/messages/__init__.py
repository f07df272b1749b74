"""What travels between the nodes: topic names, frames and QoS classes, numpy <-> message
conversions (duck-typed, message modules imported lazily), diagnostic entries. May import common."""
