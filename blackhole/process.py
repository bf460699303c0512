"""The process model: a master that forks workers sharing the listening sockets.

The master binds (as root, if need be), forks ``--workers`` workers with
``tornado.process.fork_processes`` (which replaces a worker that crashes),
forwards SIGTERM, SIGINT and SIGHUP to them, and exits once they have all
finished. Workers switch to ``--user``/``--group`` and serve. On SIGHUP the
master also re-reads the mode, delay and rules from ``--conf`` and publishes
them in the rulebook, which every worker applies.
"""

import asyncio
import ctypes
import logging
import os
import signal
import types
from typing import NamedTuple

import setproctitle
import tornado.platform.asyncio  # noqa: F401 - loaded before workers drop privileges
from tornado.process import fork_processes

try:  # pip install blackhole[uvloop]: a faster event loop, used when installed
    import uvloop
except ImportError:
    uvloop = None

from blackhole import log as logs
from blackhole import (capacity, control, descriptors, metrics, options, privileges, rulebook,
                       server, tls)
from blackhole.errors import BlackholeError
from blackhole.policy import Policy, parse_rules

log = logging.getLogger("blackhole")

GRACE = 10  # seconds sessions in flight get to finish after a stop signal
MAX_RESTARTS = 100  # crashed workers replaced before the master gives up
_stopping = False  # set by a stop signal; a worker forked or signalled early sees it
_master = None  # the master's pid
_owner = None  # (uid, gid) the log file belongs to, when workers switch account
_reload = None  # in the master: what SIGHUP re-reads the settings with


class Plan(NamedTuple):
    """Everything checked and bound before the first fork."""

    listeners: list  # (server.Listener with its Policy and TLS, bound sockets for each worker)
    context: object  # the server SSLContext, or None
    account: object  # a privileges.Account, or None to stay as we are
    metrics: list  # the bound sockets of the metrics port, or none
    admin: control.Admin  # who may change the rules there
    files: list  # (path, inode) of each Unix-domain socket bound, removed at exit
    limits: object = None  # the capacity.Limits every worker shares, or None


def listeners(values):
    """The listeners asked for: --listen/--ssl_listen, else the 1.x host and ports."""
    if values.listen:
        plain = server.parse_listeners(values.listen, implicit=False)
    else:
        plain = [server.Listener(values.host, values.port)]
    implicit = []
    if values.ssl_listen:
        if not values.ssl:
            raise BlackholeError("--ssl_listen needs --ssl=True")
        implicit = server.parse_listeners(values.ssl_listen, implicit=True)
    elif values.ssl:
        implicit = [server.Listener(values.host, values.ssl_port, implicit=True)]
    server.check_unique(plain + implicit)
    return plain + implicit


def prepare(values, settings, policy):
    """Check listeners, certificate and account, then bind: each failure is one line."""
    wanted = listeners(values)
    context = None
    if values.ssl:
        context = tls.server_context(values.ssl_cert, values.ssl_key,
                                     values.tls_min_version, settings.mailname)
    account = privileges.resolve(values.user, values.group)
    server.raise_file_limit()
    proxy_from = server.parse_networks(values.proxy_from)
    admin = control.admin(values.admin_from, values.admin_token)
    socket_mode = server.parse_socket_mode(values.socket_mode)
    # In memory shared with the workers forked later, as the metrics are.
    limits = capacity.shared(values)
    bound, files = [], []
    try:
        for listener in wanted:
            # One Random for every listener's draws, so that --seed repeats them all.
            own = Policy(listener.mode or policy.mode,
                         policy.delay if listener.delay is None else listener.delay,
                         policy.rules if listener.rules is None else listener.rules,
                         policy.draws, limits)
            if listener.path:
                sock, inode = server.bind_unix(listener.path, socket_mode,
                                               account and (account.uid, account.gid))
                files.append((listener.path, inode))
                sockets = [[sock]]  # one socket that every worker accepts on
            else:
                sockets = server.bind(listener.host, listener.port, values.workers)
            bound.append((listener._replace(policy=own, tls=context, proxy_from=proxy_from),
                          sockets))
        scrape = (server.bind(values.metrics_host, values.metrics_port)[0]
                  if values.metrics_port else [])
    except BlackholeError:
        remove_files(files)
        raise
    return Plan(bound, context, account, scrape, admin, files, limits)


def remove_files(files):
    """Remove the Unix-domain socket files we bound."""
    for path, inode in files:
        server.unbind_unix(path, inode)


def workers_of(pid):
    """The live child processes of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def _signal_workers(signum):
    for pid in workers_of(os.getpid()):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # it has just exited: nothing left to tell


def _on_stop(signum, frame):
    """In the master: pass the stop on. In a worker not yet serving: remember it."""
    global _stopping
    first, _stopping = not _stopping, True
    if os.getpid() != _master:
        return
    if first:
        log.info("Stopping")
        # Python drops signals that reach a child before its fork completes,
        # so say it again every half second until every worker is gone.
        signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    _signal_workers(signal.SIGTERM)


def _on_hangup(signum, frame):
    """In the master: reopen the log, re-read --conf, and tell the workers,
    which reopen theirs and apply what the rulebook now holds."""
    if os.getpid() == _master:
        logs.reopen(_owner)
        if _reload:
            _reload()
        _signal_workers(signal.SIGHUP)


def reloaded(values, running):
    """The rulebook settings as the command line and ``--conf`` say now.

    Only the mode, delay, rules and the running listeners' own settings are
    re-read; a BlackholeError, one line, if any of them is wrong.
    """
    fresh = options.reread(values)
    view = types.SimpleNamespace(
        **{name: values[name] for name in ("host", "port", "ssl", "ssl_port")}, **fresh)
    wanted = listeners(view)
    try:
        rules = parse_rules(fresh["rules"] or "")
    except ValueError as error:
        raise BlackholeError(str(error)) from None
    if {str(listener) for listener in wanted} != set(running):
        log.warning("The listeners in %s differ from those running: a restart takes them up",
                    values.conf)
    return rulebook.started(fresh["mode"], fresh["delay"], rules,
                            [listener for listener in wanted if str(listener) in running])


def _reloader(values, book):
    """SIGHUP's work in the master: publish the re-read settings, or keep the running ones."""

    def reload():
        try:
            settings = reloaded(values, book.running)
        except BlackholeError as error:
            log.error("Reload of %s failed, the running settings stay: %s", values.conf, error)
            return
        except Exception:  # in a signal handler of the master, which must go on
            log.exception("Reload of %s failed, the running settings stay", values.conf)
            return
        book.lock()  # held by a worker only between two of its awaits
        try:
            generation = book.publish(settings)
        except ValueError as error:
            log.error("Reload of %s failed, the running settings stay: %s", values.conf, error)
            return
        finally:
            book.unlock()
        log.info("Reloaded %s: settings generation %d", values.conf, generation)

    return reload if values.conf else None


def catch_signals():
    """Make this process the master and take its signals: before binding, so a
    stop that comes early is a clean stop rather than a kill."""
    global _master
    _master = os.getpid()
    for signum, handler in ((signal.SIGTERM, _on_stop), (signal.SIGINT, _on_stop),
                            (signal.SIGALRM, _on_stop), (signal.SIGHUP, _on_hangup)):
        signal.signal(signum, handler)
    # A worker's siblings say "the rulebook changed" with SIGUSR1: until its
    # event loop hears it, a worker ignores it (and reads the rulebook then).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def serve(plan, values, settings, policy, stderr=False, ready=None):
    """Run the master until its workers are done; return its exit code.

    ``ready`` is called once everything is listening, just before the fork.
    Workers never return from here.
    """
    global _owner, _reload
    setproctitle.setproctitle("blackhole: master")
    logs.configure(values.log, values.debug, stderr)
    _owner = plan.account and (plan.account.uid, plan.account.gid)
    if _owner:
        logs.chown(_owner)  # so workers can write to it, and to the next after a SIGHUP
    elif os.geteuid() == 0:
        log.warning("Running as root: there is no '%s' account (see --user, --group)",
                    values.user)
    for line in announcement(plan, values, settings):
        log.info("%s", line)
    # A block of counters for each worker, in memory shared with them: nothing
    # on disk for the workers' account to plant, nothing a SIGKILL leaves behind.
    blocks = metrics.shared(values.workers)
    book = rulebook.Rulebook(
        values.workers,
        rulebook.started(policy.mode, policy.delay, policy.rules,
                         [listener for listener, _ in plan.listeners]),
        [str(listener) for listener, _ in plan.listeners])
    _reload = _reloader(values, book)
    if ready:
        ready()
    code = 0
    if not _stopping:  # a stop that came before the fork leaves nothing to fork
        try:
            task = fork_processes(values.workers, max_restarts=MAX_RESTARTS)
        except SystemExit:  # fork_processes: every worker exited cleanly
            pass
        except RuntimeError as error:  # too many restarts
            log.error("%s", error)
            code = 1
        else:
            if values.seed is None:
                policy.draws.seed()  # or every worker would draw what its siblings draw
            _worker(plan, values, settings, stderr, _master, blocks, book, task)
    signal.setitimer(signal.ITIMER_REAL, 0)
    remove_files(plan.files)
    log.info("%s", metrics.summary(blocks))
    log.info("Stopped")
    return code


def announcement(plan, values, settings):
    """What the master says it serves: logged by ``run``, printed by ``start``."""
    lines = []
    for listener, _ in plan.listeners:
        own = listener.policy
        delay = own.delay if isinstance(own.delay, tuple) else (own.delay,) * 2
        speaks = (("", " for SMTPS"), (" for LMTP", " for LMTP over TLS"))[
            listener.lmtp][listener.implicit]
        lines.append(f"Listening{speaks} on {listener}"
                     f"{', PROXY header first' if listener.proxy else ''}, mode {own.mode}"
                     + (f", delay {'-'.join(f'{d:g}' for d in sorted(set(delay)))}s"
                        if own.delay else "")
                     + (f", rules {' '.join(rule.token for rule in own.rules)}"
                        if own.rules else ""))
    if plan.limits is not None:
        lines.append(f"Limits: {plan.limits}")
    if plan.context and values.ssl_cert is None and values.ssl_key is None:
        lines.append("No certificate configured: using a self-signed one for "
                     f"{settings.mailname}")
    if plan.metrics:
        address = server.address(values.metrics_host, values.metrics_port)
        lines.append(f"Metrics on http://{address}/metrics")
    return lines


def _follow_master(master):
    """Linux: have the kernel send SIGTERM when the master dies, even by SIGKILL.

    Called after the switch of account, which would clear it.
    """
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers outlive a killed master, as in 1.x
    if os.getppid() != master:
        os._exit(0)  # it died before we asked


def _worker(plan, values, settings, stderr, master, blocks, book, task):
    """A forked worker: switch account, serve until told to stop, and exit."""
    if _stopping:
        os._exit(0)  # forked as a replacement while the master was stopping
    setproctitle.setproctitle("blackhole: worker")
    # Until the event loop takes the signals over, _on_stop only sets _stopping.
    listener = logs.configure(values.log, values.debug, stderr, threaded=True)
    code = 1  # non-zero: fork_processes replaces the worker
    try:
        if plan.account:
            privileges.drop(plan.account)
        _follow_master(master)
        metrics.count_in(blocks, task)  # a replacement gets its predecessor's task
        if plan.limits is not None:
            plan.limits.count_in(task)
        follower = rulebook.Follower(book, task, [], lambda: workers_of(master))
        (uvloop.run if uvloop else asyncio.run)(_serve(plan, settings, blocks, follower))
        code = 0
    except Exception:
        log.exception("Worker %d failed", os.getpid())
    finally:
        listener.stop()
        # Never unwind into the master's code (its pid file, its cleanup).
        os._exit(code)


async def _serve(plan, settings, blocks, follower):
    """Serve the follower's task's sockets until a stop signal arrives."""
    mine = _own_sockets(plan.listeners, follower.task)
    follower.served = [(str(listener), listener.policy) for listener, _ in mine]
    # The budget is what the descriptor limit leaves once all else is open.
    sessions = server.Sessions(
        settings.timeout, descriptors.budget(control.CONNECTIONS if plan.metrics else 0))
    servers = []
    for listener, sockets in mine:
        smtp = server.SMTPServer(settings, listener, sessions)
        smtp.add_sockets(sockets)
        servers.append(smtp)
    stop = asyncio.Event()
    if plan.metrics:  # any worker may answer a scrape: each reads every worker's counts
        control.http_server(blocks, lambda: not stop.is_set(), follower,
                            plan.admin).add_sockets(plan.metrics)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def hangup():
        logs.reopen()
        follower.catch_up()

    loop.add_signal_handler(signal.SIGHUP, hangup)
    loop.add_signal_handler(signal.SIGUSR1, follower.catch_up)
    follower.catch_up()  # after the handlers: a change made meanwhile is not missed
    # Said once the worker is titled, switched and hears its signals: tests wait for it.
    log.info("Worker %d serving on %s", os.getpid(),
             f"uvloop {uvloop.__version__}" if type(loop).__module__.startswith("uvloop")
             else "asyncio")
    if _stopping:  # told to stop before the loop could hear it
        stop.set()
    await stop.wait()
    await server.drain(servers, GRACE)


def _own_sockets(listeners, task):
    """This worker's sockets of each listener; the other workers' are closed
    here, where they would only use up descriptors."""
    mine = []
    for listener, per_worker in listeners:
        for index, sockets in enumerate(per_worker):
            if index == task % len(per_worker):
                mine.append((listener, sockets))
            else:
                for sock in sockets:
                    sock.close()
    return mine


def run(values, settings, policy):
    """The ``run`` action: serve in the foreground, logging to stderr, and to a file
    only when --log names one (a file left by another account never stops it)."""
    catch_signals()
    return serve(prepare(values, settings, policy), values, settings, policy, stderr=True)
