"""Training room: Lightning + open_clip CLIP training from scratch on webdataset shards."""
