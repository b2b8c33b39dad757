"""The model: which folder ``model_name`` names (resolve, checkpoints, hub), graph verification, the device
policy and ONNX Runtime sessions, ``LongCLIP`` and numpy scoring."""
