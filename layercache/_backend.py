"""Which event loop is running: asyncio or trio (the two anyio backends we support)."""

from __future__ import annotations


def running_library() -> str:
    """``"trio"`` or ``"asyncio"``, for the loop running this call.

    sniffio comes with trio (anyio itself does not need it): where it is missing, trio
    is not installed and the loop is asyncio's.
    """
    try:
        import sniffio
    except ImportError:  # pragma: no cover - trio is not installed
        return "asyncio"
    return sniffio.current_async_library()
