"""Images: the readers every part of chexcli uses (:mod:`.readers`) and the uint8 image cache."""
