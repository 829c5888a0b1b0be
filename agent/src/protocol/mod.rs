//! Protocol parsers: from the bytes of one connection to paired requests and responses.
