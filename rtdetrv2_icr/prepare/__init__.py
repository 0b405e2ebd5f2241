"""Offline data preparation, apart from the loader: the YOLO -> COCO importer with its pairing of
children and parents, dataset statistics and the synthetic plate/vehicle generator. Imported
only by the tools (and experiments) that prepare data, never by training."""
