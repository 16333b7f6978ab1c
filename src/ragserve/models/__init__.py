"""Models: catalog, persistent cache, ONNX runtime, embedders and rerankers."""
