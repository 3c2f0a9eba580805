import pytest
from PIL import Image, ImageFile, WebPImagePlugin


@pytest.fixture
def pixel_work(monkeypatch):
    """Records every pixel buffer Pillow allocates and every decode it starts.

    tracemalloc cannot show these: Pillow allocates pixel memory with C malloc, and
    libwebp allocates its canvas when its decoder object is created.
    """
    events: list[tuple] = []
    new, load, anim_decoder = Image.core.new, ImageFile.ImageFile.load, WebPImagePlugin._webp.WebPAnimDecoder

    def recording_new(mode, size, *args):
        events.append(("buffer", size))
        return new(mode, size, *args)

    def recording_load(self):
        events.append(("load", self.size))
        return load(self)

    def recording_anim_decoder(data):
        events.append(("webp_decoder", len(data)))
        return anim_decoder(data)

    monkeypatch.setattr(Image.core, "new", recording_new)
    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", recording_anim_decoder)
    return events
