-- Letta stores embeddings with pgvector: enable the extension once, when the database is created.
CREATE EXTENSION IF NOT EXISTS vector;
