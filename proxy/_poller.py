"""One epoll set for the proxy's tunnel sockets, watched by the event loop as a single reader.

Every tunnel socket is watched for a few steps and then closed. Through the loop's own
``add_reader`` that costs, per socket, a poll handle whose set-up probes the descriptor
(two epoll_ctl calls and an ioctl), a registration, and a tear-down of three more epoll_ctl
calls, plus the loop's Python-level bookkeeping on every change (docs/architecture.md,
decision 61). Here a socket costs one epoll_ctl to be watched and one to be dropped; the
loop watches only this set's descriptor and calls :meth:`Poller.dispatch` when any socket in
it is ready. The interface is the loop's (``add_reader``, ``remove_reader``, ``add_writer``,
``remove_writer``), with one callback per direction and no arguments, and its contract: a
socket is dropped (no reader, no writer) before it is closed.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT
# A failed or hung-up socket wakes its reader and its writer too.
_READABLE: Final = _IN | select.EPOLLERR | select.EPOLLHUP
_WRITABLE: Final = _OUT | select.EPOLLERR | select.EPOLLHUP
# Ready sockets taken per dispatch; more stay ready (level-triggered) for the next iteration.
MAX_EVENTS: Final = 256


class Poller:
    """Readers and writers of many sockets behind one descriptor of the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the epoll set and have ``loop`` dispatch it whenever it is ready."""
        self._loop = loop
        self._epoll = select.epoll()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._masks: dict[int, int] = {}
        # Dropped during the current dispatch: their pending events are stale (the number may
        # already name a new socket, whose events come in the next dispatch).
        self._dropped: set[int] = set()
        loop.add_reader(self._epoll.fileno(), self.dispatch)

    def close(self) -> None:
        """Stop dispatching and close the epoll set (the sockets themselves are not closed)."""
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._readers.clear()
        self._writers.clear()
        self._masks.clear()

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is readable (replacing its reader, if any)."""
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` for input."""
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever ``fd`` is writable (replacing its writer, if any)."""
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        """Stop watching ``fd`` for writability."""
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def _update(self, fd: int) -> None:
        mask = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:  # a swapped callback: nothing for the kernel to change
            return
        if not mask:
            del self._masks[fd]
            self._dropped.add(fd)
            try:  # noqa: SIM105 - on every tunnel: a try costs nothing, suppress() is a call
                self._epoll.unregister(fd)
            except OSError:  # closed already: the kernel has dropped it from the set
                pass
        elif old:
            self._masks[fd] = mask
            try:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:  # closed while watched, and the number reused
                self._epoll.register(fd, mask)
            except OSError:  # closed while watched: nothing left to watch
                pass
        else:
            self._masks[fd] = mask
            self._epoll.register(fd, mask)

    def dispatch(self) -> None:
        """Run the callbacks of every ready socket (the loop calls this).

        What a callback raises goes to the loop's exception handler, as a loop callback's
        would; the other sockets are still dispatched.
        """
        dropped, readers, writers = self._dropped, self._readers, self._writers
        dropped.clear()
        for fd, events in self._epoll.poll(0, MAX_EVENTS):
            try:
                if events & _READABLE and fd not in dropped and (reader := readers.get(fd)):
                    reader()
                if events & _WRITABLE and fd not in dropped and (writer := writers.get(fd)):
                    writer()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001 - one socket must not stop the rest
                self._loop.call_exception_handler(
                    {"message": "Exception in a socket callback", "exception": exc}
                )
