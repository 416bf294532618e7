"""Task arguments and errors as Flower, events and logs show them: with every secret masked.

Celery shows a task's arguments through the reprs `argsrepr` and `kwargsrepr`: the publisher's
`task-sent` event carries them, the message headers carry them to the worker, and the worker's
`task-received` event, `celery inspect` and its log records' extra data repeat them. A client
may put a secret into a request by mistake (a SCADA URL with its password, a token). Here the
reprs are rebuilt from the real arguments with the value under every secret-looking key
replaced by `***` and the password of every `scheme://user:pass@host` string masked (the rules
are `training_tasks.redaction.masked`). The arguments themselves (the message body) are never
changed.

A secret can enter through three doors, so there are three hooks, all idempotent, and a fourth
for what a failed task says about its error:

- `MaskingAMQP`, this app's message builder, masks the reprs when a message is created, so the
  `task-sent` event (sent before any publish signal) is masked too;
- `mask_task_headers` (`before_task_publish`) masks the headers of a message of any Celery app
  in a process that loaded this one, such as a `TrainingClient`'s bare app;
- `mask_received_request` (`task_received`) masks, in the worker, a message from a client that
  never loaded this code (another service's bare Celery app), before its `task-received` event;
- `mask_failure` (`task_failure`) masks, in the process that ran a failed task, the error's
  message and traceback before the worker logs them and sends its `task-failed` event: a
  refusal may echo a value the client sent. (The stored result is masked by the result backend,
  `result_masking.py`.)
"""

from __future__ import annotations

from typing import Any

from celery.app.amqp import AMQP
from celery.signals import before_task_publish, task_failure, task_received
from celery.utils.saferepr import saferepr

from training_tasks.messaging.broker_transport import Connection
from training_tasks.messaging.queues import TaskConsumer, TaskQueues
from training_tasks.redaction import mask_text, masked

# Celery's own limits for argsrepr/kwargsrepr (AMQP.argsrepr_maxsize, task_repr_maxlevels).
REPR_MAX_CHARS = 1024
REPR_MAX_LEVELS = 3


def masked_repr(value: Any, maxlen: int = REPR_MAX_CHARS, maxlevels: int = REPR_MAX_LEVELS) -> str:
    """The repr Celery would show for `value`, made from its masked copy."""
    return str(saferepr(masked(value), maxlen=maxlen, maxlevels=maxlevels))


def as_list(args: Any) -> list[Any]:
    """Positional arguments as a list, whether a publisher holds them as a tuple or a worker as
    the list JSON gave it: the sent and the received event then show the same repr (Flower keeps
    whichever of the two it hears last)."""
    return list(args) if isinstance(args, list | tuple) else ([] if args is None else [args])


class MaskingAMQP(AMQP):
    """Celery's message builder with masked argument reprs, in the headers and the sent event.

    Creating it (the app does on first use) also connects the two signal handlers below. Its
    broker connections name the service's transport `redis` (see broker_transport.Connection),
    and a message's sent event carries the task's display name (`shadow`) when it has one, as
    the worker's events do, so Flower never shows one task under two names. A queue added by
    name at runtime is declared with the configured queue type, and consumed once the worker
    can take its messages (queues.py).
    """

    Connection = Connection
    Consumer = TaskConsumer
    queues_cls = TaskQueues

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        connect_handlers()

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        *rest: Any,
        argsrepr: str | None = None,
        kwargsrepr: str | None = None,
        **options: Any,
    ) -> Any:
        levels = self.app.conf.task_repr_maxlevels
        message = super().as_task_v2(
            task_id,
            name,
            args,
            kwargs,
            *rest,
            # A repr the caller chose may hold a secret just as well: rebuild it from the data.
            argsrepr=masked_repr(as_list(args), self.argsrepr_maxsize, levels),
            kwargsrepr=masked_repr(kwargs or {}, self.kwargsrepr_maxsize, levels),
            **options,
        )
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message


def mask_task_headers(
    sender: Any = None, body: Any = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    """`before_task_publish`: set argsrepr/kwargsrepr of a protocol-2 message to masked reprs."""
    if headers is None or not isinstance(body, list | tuple) or len(body) != 3:
        return  # protocol 1 carries no reprs; its body is a dict
    args, kwargs, _embed = body
    headers["argsrepr"] = masked_repr(as_list(args))
    headers["kwargsrepr"] = masked_repr(kwargs if kwargs is not None else {})


def mask_received_request(sender: Any = None, request: Any = None, **_: Any) -> None:
    """`task_received` (worker): mask the reprs of a message before its task-received event."""
    if request is None:
        return
    argsrepr = masked_repr(as_list(request.args))
    kwargsrepr = masked_repr(request.kwargs if request.kwargs is not None else {})
    # The event and `inspect` read the request's own copies; the task's context reads the dict.
    request.request_dict.update(argsrepr=argsrepr, kwargsrepr=kwargsrepr)
    if hasattr(request, "_argsrepr"):
        request._argsrepr, request._kwargsrepr = argsrepr, kwargsrepr


def mask_failure(sender: Any = None, exception: Any = None, einfo: Any = None, **_: Any) -> None:
    """`task_failure`: mask the error's arguments, text attributes and traceback text in place."""
    if isinstance(exception, BaseException):
        exception.args = tuple(masked(list(exception.args)))
        for name, value in list(getattr(exception, "__dict__", {}).items()):
            if isinstance(value, str):  # ConfigError keeps its field and problem apart
                setattr(exception, name, mask_text(value))
    if einfo is None:
        return
    if isinstance(getattr(einfo, "traceback", None), str):
        einfo.traceback = mask_text(einfo.traceback)
    # billiard sends the traceback to the worker's main process a second time, beside the error.
    carrier: Any = getattr(einfo, "exception", None)
    if isinstance(getattr(carrier, "tb", None), str):
        carrier.tb = mask_text(carrier.tb)


def connect_handlers() -> None:
    """Connect the signal handlers, once per process (Celery signals are process-wide)."""
    before_task_publish.connect(
        mask_task_headers, weak=False, dispatch_uid="training_tasks.mask_task_headers"
    )
    task_received.connect(
        mask_received_request, weak=False, dispatch_uid="training_tasks.mask_received_request"
    )
    task_failure.connect(mask_failure, weak=False, dispatch_uid="training_tasks.mask_failure")
