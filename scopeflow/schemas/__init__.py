"""Wire schemas (pydantic v2): each message of ``docs/protocol.md`` as a closed, versioned model."""
