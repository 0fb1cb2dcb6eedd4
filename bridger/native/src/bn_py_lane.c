/* bn_py_lane.c - the Lane type: Python's handle on one native lane.
 *
 * Every method but run() and stop() is called from the Trio thread; the ones
 * that touch the lane's tables take its (recursive) mutex themselves, and
 * Python holds it around whole core calls with lock()/unlock().  run() is the
 * loop, called from a worker thread with the GIL released; the loop never
 * touches a Python object, only the C structs the objects own (sessions are
 * kept alive by the references taken here).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "bn_lane.h"
#include "bn_py.h"

typedef struct {
    PyObject_HEAD
    bn_lane *l;
    int ready;
    int error_port;
} LaneObject;

static void lock(LaneObject *self) {
    if (pthread_mutex_trylock(&self->l->mu) == 0)
        return;
    /* the loop gives way while someone waits (give_way in bn_lane.c) */
    __atomic_add_fetch(&self->l->waiters, 1, __ATOMIC_ACQ_REL);
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->l->mu);
    Py_END_ALLOW_THREADS
    __atomic_sub_fetch(&self->l->waiters, 1, __ATOMIC_ACQ_REL);
}

static void unlock(LaneObject *self) { pthread_mutex_unlock(&self->l->mu); }

static int check_ready(LaneObject *self) {
    if (!self->ready) {
        PyErr_SetString(PyExc_ValueError, "lane is closed");
        return -1;
    }
    return 0;
}

static int check_port(LaneObject *self, int port) {
    if (check_ready(self) < 0)
        return -1;
    if (port < 0 || port >= BN_MAX_PORTS || !self->l->ports[port].used) {
        PyErr_Format(PyExc_ValueError, "no lane port %d", port);
        return -1;
    }
    return 0;
}

/* ---- addresses ----------------------------------------------------------- */

static int to_sockaddr(PyObject *addr, struct sockaddr_storage *ss, socklen_t *len) {
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2
        || !PyUnicode_Check(PyTuple_GET_ITEM(addr, 0))
        || !PyLong_Check(PyTuple_GET_ITEM(addr, 1))) {
        PyErr_SetString(PyExc_TypeError, "address must be a (host, port, ...) tuple");
        return -1;
    }
    const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    long port = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (host == NULL || (port == -1 && PyErr_Occurred()))
        return -1;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    char buf[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (strchr(host, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        snprintf(buf, sizeof buf, "%s", host);
        char *pct = strchr(buf, '%');
        if (pct) {
            *pct = 0;
            s6->sin6_scope_id = if_nametoindex(pct + 1);
            if (s6->sin6_scope_id == 0)
                s6->sin6_scope_id = (uint32_t)strtoul(pct + 1, NULL, 10);
        }
        if (inet_pton(AF_INET6, buf, &s6->sin6_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv6 address: %s", host);
            return -1;
        }
        *len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
            return -1;
        }
        *len = sizeof *s4;
    }
    return 0;
}

/* The tuple Python's socket module gives for the same address. */
static PyObject *from_sockaddr(const struct sockaddr_storage *ss, socklen_t len) {
    char host[NI_MAXHOST];
    if (getnameinfo((const struct sockaddr *)ss, len, host, sizeof host, NULL, 0,
                    NI_NUMERICHOST) != 0)
        host[0] = 0;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)ss;
        return Py_BuildValue("(siII)", host, ntohs(s6->sin6_port), ntohl(s6->sin6_flowinfo),
                             s6->sin6_scope_id);
    }
    const struct sockaddr_in *s4 = (const void *)ss;
    return Py_BuildValue("(si)", host, ntohs(s4->sin_port));
}

/* ---- type ----------------------------------------------------------------- */

static void release_refs(LaneObject *self) {
    bn_lane *l = self->l;
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        Py_CLEAR(*(PyObject **)&l->ports[i].send_ref);
        l->ports[i].send = NULL;
    }
    for (int i = 0; i < l->nrx; i++)
        Py_CLEAR(*(PyObject **)&l->rx[i].ref);
    l->nrx = 0;
}

static int Lane_init(LaneObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"udp_fd", "dual_stack", "gso", "gro", "clock_offset", NULL};
    int fd, dual, gso, gro;
    double offset;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ipppd", kwlist, &fd, &dual, &gso, &gro, &offset))
        return -1;
    if (self->l) {
        PyErr_SetString(PyExc_RuntimeError, "Lane already initialised");
        return -1;
    }
    self->l = PyMem_RawCalloc(1, sizeof(bn_lane));
    if (!self->l) {
        PyErr_NoMemory();
        return -1;
    }
    if (bn_lane_init(self->l, fd, dual, gso, gro, offset) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        bn_lane_free(self->l);
        PyMem_RawFree(self->l);
        self->l = NULL;
        return -1;
    }
    self->ready = 1;
    self->error_port = -1;
    return 0;
}

static PyObject *Lane_close(LaneObject *self, PyObject *unused) {
    if (self->l && !self->l->running) {
        release_refs(self);
        bn_lane_free(self->l);
        PyMem_RawFree(self->l);
        self->l = NULL;
        self->ready = 0;
    } else if (self->l) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is running: stop it first");
        return NULL;
    }
    Py_RETURN_NONE;
}

static void Lane_dealloc(LaneObject *self) {
    if (self->l && !self->l->running) {
        release_refs(self);
        bn_lane_free(self->l);
        PyMem_RawFree(self->l);
    }
    /* a running lane is leaked rather than freed under its thread */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_run(LaneObject *self, PyObject *unused) {
    if (check_ready(self) < 0)
        return NULL;
    if (self->l->running) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is already running");
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = bn_lane_run(self->l);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        self->error_port = self->l->err_port;
        errno = self->l->err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Lane_stop(LaneObject *self, PyObject *unused) {
    if (self->l)
        bn_lane_stop(self->l);
    Py_RETURN_NONE;
}

static PyObject *Lane_reset(LaneObject *self, PyObject *unused) {
    if (check_ready(self) < 0)
        return NULL;
    if (self->l->running) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is running");
        return NULL;
    }
    uint64_t v;
    if (read(self->l->stop_fd, &v, sizeof v) < 0) {
        /* not signalled */
    }
    self->l->stopping = 0;
    Py_RETURN_NONE;
}

static PyObject *Lane_lock(LaneObject *self, PyObject *unused) {
    if (check_ready(self) < 0)
        return NULL;
    lock(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_unlock(LaneObject *self, PyObject *unused) {
    if (check_ready(self) < 0)
        return NULL;
    unlock(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_add_port(LaneObject *self, PyObject *args) {
    int fd, vnet;
    Py_buffer g = {0};
    if (!PyArg_ParseTuple(args, "ipz*", &fd, &vnet, &g))
        return NULL;
    if (check_ready(self) < 0) {
        PyBuffer_Release(&g);
        return NULL;
    }
    bn_guard_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    if (g.buf) {
        if ((size_t)g.len != sizeof cfg) {
            PyBuffer_Release(&g);
            PyErr_Format(PyExc_ValueError, "guard config must be %zu bytes", sizeof cfg);
            return NULL;
        }
        memcpy(&cfg, g.buf, sizeof cfg);
    }
    PyBuffer_Release(&g);
    lock(self);
    int port = bn_lane_add_port(self->l, fd, vnet, &cfg);
    unlock(self);
    if (port < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(port);
}

static void drop_rx(bn_lane *l, int port) {
    int k = 0;
    for (int i = 0; i < l->nrx; i++) {
        if (l->rx[i].port == port) {
            Py_CLEAR(*(PyObject **)&l->rx[i].ref);
            continue;
        }
        l->rx[k++] = l->rx[i];
    }
    l->nrx = k;
}

static PyObject *Lane_set_udp_join(LaneObject *self, PyObject *args) {
    int port, on;
    if (!PyArg_ParseTuple(args, "ip", &port, &on))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    lock(self);
    self->l->ports[port].udp_join = on;
    unlock(self);
    Py_RETURN_NONE;
}

/* lend(port, nd, other) -> (nd, other): add tokens of the port's storm
 * buckets to its credit (bn_port.credit); the credit after. */
static PyObject *Lane_lend(LaneObject *self, PyObject *args) {
    int port;
    unsigned int nd, other;
    if (!PyArg_ParseTuple(args, "iII", &port, &nd, &other))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    lock(self);
    uint32_t *credit = self->l->ports[port].credit;
    credit[0] = nd > UINT32_MAX - credit[0] ? UINT32_MAX : credit[0] + nd;
    credit[1] = other > UINT32_MAX - credit[1] ? UINT32_MAX : credit[1] + other;
    PyObject *r = Py_BuildValue("(II)", credit[0], credit[1]);
    unlock(self);
    return r;
}

static PyObject *Lane_remove_port(LaneObject *self, PyObject *args) {
    int port;
    if (!PyArg_ParseTuple(args, "i", &port))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    lock(self);
    bn_lane *l = self->l;
    bn_port *p = &l->ports[port];
    /* out of epoll; a closed fd is out already */
    if (!p->held && p->fd >= 0 && epoll_ctl(l->epfd, EPOLL_CTL_DEL, p->fd, NULL) < 0
        && errno != ENOENT && errno != EBADF)
        bn_lane_fail(l, errno, port);
    Py_CLEAR(*(PyObject **)&p->send_ref);
    p->send = NULL;
    drop_rx(l, port);
    /* pending frames for it: none outside a wake-up.  Its queued hand-overs
     * must not reach a port that reuses the slot (a reload frees and refills
     * slots at once): they go, or stop naming it. */
    memset(p, 0, sizeof *p);
    bn_lane_forget_punts(l, port);
    unlock(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_set_port(LaneObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"port", "send", "endpoint", "fits_plain", "fits_csum", "room",
                             "max_frame", "blocked", NULL};
    int port, fits_plain, fits_csum, room, max_frame, blocked;
    PyObject *send, *endpoint;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iOOiiiip", kwlist, &port, &send, &endpoint,
                                     &fits_plain, &fits_csum, &room, &max_frame, &blocked))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    if (send != Py_None && !BnSession_Check(send)) {
        PyErr_SetString(PyExc_TypeError, "send must be a Session or None");
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t len = 0;
    memset(&ss, 0, sizeof ss);
    if (endpoint != Py_None && to_sockaddr(endpoint, &ss, &len) < 0)
        return NULL;
    if (fits_plain < 0 || fits_csum < 0 || room < 0 || max_frame < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes must be >= 0");
        return NULL;
    }
    lock(self);
    bn_port *p = &self->l->ports[port];
    PyObject *old = p->send_ref;
    if (send != Py_None) {
        Py_INCREF(send);
        p->send_ref = send;
        p->send = &((BnSessionObject *)send)->s;
    } else {
        p->send_ref = NULL;
        p->send = NULL;
    }
    p->ep = ss;
    p->ep_len = len;
    p->fits_plain = fits_plain;
    p->fits_csum = fits_csum;
    p->room = room;
    p->max_frame = max_frame;
    p->blocked = blocked;
    Py_XDECREF(old);
    unlock(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_set_rx(LaneObject *self, PyObject *args) {
    int port;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO", &port, &seq))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "sessions must be a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > 3) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "at most 3 receive sessions per port");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!BnSession_Check(PySequence_Fast_GET_ITEM(fast, i))) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "sessions must be Session objects");
            return NULL;
        }
    }
    lock(self);
    bn_lane *l = self->l;
    drop_rx(l, port);
    for (Py_ssize_t i = 0; i < n && l->nrx < BN_MAX_RX; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        bn_session *s = &((BnSessionObject *)o)->s;
        /* an index appears once: a newer entry replaces an older one */
        for (int k = 0; k < l->nrx; k++) {
            if (l->rx[k].index == s->local_index) {
                Py_CLEAR(*(PyObject **)&l->rx[k].ref);
                l->rx[k] = l->rx[--l->nrx];
                break;
            }
        }
        Py_INCREF(o);
        l->rx[l->nrx].index = s->local_index;
        l->rx[l->nrx].port = port;
        l->rx[l->nrx].s = s;
        l->rx[l->nrx].ref = o;
        l->nrx++;
    }
    unlock(self);
    Py_DECREF(fast);
    Py_RETURN_NONE;
}

static PyObject *Lane_release(LaneObject *self, PyObject *args) {
    int port;
    if (!PyArg_ParseTuple(args, "i", &port))
        return NULL;
    if (port >= 0 && check_port(self, port) < 0)
        return NULL;
    if (check_ready(self) < 0)
        return NULL;
    lock(self);
    bn_lane_release(self->l, port < 0 ? -1 : port);
    unlock(self);
    Py_RETURN_NONE;
}

/* One hand-over as (kind, fields...): bridger/native/contract.py turns it into
 * its record (TapPunt, RawPunt, PayloadPunt, FramePunt, HandshakePunt,
 * MtuPunt). */
static PyObject *punt_tuple(const bn_punt *p) {
    switch (p->kind) {
    case BN_PUNT_TAP:
        return Py_BuildValue("(iiy#)", p->kind, p->port, (const char *)p->data,
                             (Py_ssize_t)p->len);
    case BN_PUNT_FRAME:
        return Py_BuildValue("(iiy#ii)", p->kind, p->port, (const char *)p->data,
                             (Py_ssize_t)p->len, (int)p->csum_start, (int)p->csum_offset);
    case BN_PUNT_PAYLOAD: {
        PyObject *addr = from_sockaddr(&p->from, p->from_len);
        if (!addr)
            return NULL;
        return Py_BuildValue("(iiIy#IN)", p->kind, p->port, p->local_index,
                             (const char *)p->data, (Py_ssize_t)p->len, p->size, addr);
    }
    case BN_PUNT_HANDSHAKE: {
        PyObject *addr = from_sockaddr(&p->from, p->from_len);
        if (!addr)
            return NULL;
        return Py_BuildValue("(iy#N)", p->kind, (const char *)p->data, (Py_ssize_t)p->len, addr);
    }
    case BN_PUNT_MTU: {
        PyObject *addr = from_sockaddr(&p->from, p->from_len);
        if (!addr)
            return NULL;
        return Py_BuildValue("(iiNIO)", p->kind, p->port, addr, p->size,
                             p->local ? Py_True : Py_False);
    }
    case BN_PUNT_RAW: {
        PyObject *list = PyList_New(p->count);
        if (!list)
            return NULL;
        size_t off = 0;
        for (int i = 0; i < p->count; i++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)p->data + off, p->lens[i]);
            if (!b) {
                Py_DECREF(list);
                return NULL;
            }
            PyList_SET_ITEM(list, i, b);
            off += p->lens[i];
        }
        PyObject *addr = from_sockaddr(&p->from, p->from_len);
        if (!addr) {
            Py_DECREF(list);
            return NULL;
        }
        return Py_BuildValue("(iNN)", p->kind, list, addr);
    }
    }
    Py_RETURN_NONE;
}

static PyObject *Lane_take_punts(LaneObject *self, PyObject *unused) {
    if (check_ready(self) < 0)
        return NULL;
    uint64_t v;
    if (read(self->l->punt_fd, &v, sizeof v) < 0) {
        /* nothing signalled */
    }
    lock(self);
    bn_punt *p = self->l->punts;
    self->l->punts = NULL;
    self->l->punt_tail = &self->l->punts;
    self->l->nhs = 0;
    unlock(self);
    PyObject *list = PyList_New(0);
    while (p) {
        bn_punt *next = p->next;
        if (list) {
            PyObject *t = punt_tuple(p);
            if (!t || PyList_Append(list, t) < 0)
                Py_CLEAR(list);
            Py_XDECREF(t);
        }
        free(p->data);
        free(p->lens);
        free(p);
        p = next;
    }
    return list;
}

/* The order of take_stats' tuples, exported as PORT_STAT_FIELDS,
 * LANE_STAT_FIELDS and DIR_FIELDS: contract.py's records must have these
 * fields in this order (tests/native/test_contract.py). */
static const char *const PORT_STAT_FIELDS[] = {
    "port", "tx_frames", "tx_datagrams", "tx_bytes", "rx_datagrams", "rx_bytes", "rx_frames",
    "drop_auth", "drop_replay", "drop_too_old", "drop_too_big", "drop_malformed", "drop_stale",
    "tap_write_failed", "lan_to_wan", "wan_to_lan", "tx_first_data", "tx_last", "rx_last",
    "rx_first_data", NULL};
static const char *const LANE_STAT_FIELDS[] = {
    "rx_datagrams", "rx_bytes", "udp_send_blocked", "udp_send_failed", "udp_send_too_big",
    "wakeups", "maclog_lost", "gso_refused", "udp_truncated", "drop_malformed",
    "drop_unknown_index", "drop_mac1", "handshakes_queued", "handshakes_shed", "udp_errors",
    "mtu_reports", NULL};
static const char *const DIR_FIELDS[] = {"frames", "bytes", "kinds", NULL};
static const char *const MACLOG_FIELDS[] = {"port", "direction", "mac", "frames", "bytes", NULL};

static PyObject *dir_tuple(const bn_dir *d) {
    PyObject *kinds = PyTuple_New(BN_NKINDS);
    if (!kinds)
        return NULL;
    for (int i = 0; i < BN_NKINDS; i++)
        PyTuple_SET_ITEM(kinds, i, PyLong_FromUnsignedLongLong(d->kinds[i]));
    return Py_BuildValue("(KKN)", (unsigned long long)d->frames, (unsigned long long)d->bytes,
                         kinds);
}

static PyObject *Lane_take_stats(LaneObject *self, PyObject *unused) {
    if (check_ready(self) < 0)
        return NULL;
    bn_lane *l = self->l;
    PyObject *ports = PyList_New(0), *macs = PyList_New(0), *dev = NULL, *result = NULL;
    if (!ports || !macs)
        goto done;
    lock(self);
    for (int i = 0; i < BN_MAX_PORTS; i++) {
        bn_port *p = &l->ports[i];
        bn_port_stats *s = &p->st;
        if (!p->used || (s->tx_datagrams == 0 && s->rx_datagrams == 0 && s->tap_write_failed == 0
                         && s->wan_to_lan.frames == 0))
            continue;
        PyObject *tx = dir_tuple(&s->lan_to_wan), *rx = dir_tuple(&s->wan_to_lan);
        PyObject *t = tx && rx ? Py_BuildValue(
            "(iKKKKKKKKKKKKKNNdddd)", i,
            (unsigned long long)s->tx_frames, (unsigned long long)s->tx_datagrams,
            (unsigned long long)s->tx_bytes, (unsigned long long)s->rx_datagrams,
            (unsigned long long)s->rx_bytes, (unsigned long long)s->rx_frames,
            (unsigned long long)s->drop_auth, (unsigned long long)s->drop_replay,
            (unsigned long long)s->drop_too_old, (unsigned long long)s->drop_too_big,
            (unsigned long long)s->drop_malformed, (unsigned long long)s->drop_stale,
            (unsigned long long)s->tap_write_failed,
            tx, rx, s->tx_first_data, s->tx_last, s->rx_last, s->rx_first_data) : NULL;
        if (!t) {
            Py_XDECREF(tx);
            Py_XDECREF(rx);
            unlock(self);
            goto done;
        }
        int bad = PyList_Append(ports, t);
        Py_DECREF(t);
        if (bad < 0) {
            unlock(self);
            goto done;
        }
        memset(s, 0, sizeof *s);
    }
    for (int i = 0; i < l->nmaclog; i++) {
        bn_maclog_entry *e = &l->maclog[i];
        PyObject *t = Py_BuildValue("(iiy#KK)", e->port, e->dir, (const char *)e->mac,
                                    (Py_ssize_t)6, (unsigned long long)e->frames,
                                    (unsigned long long)e->bytes);
        if (!t || PyList_Append(macs, t) < 0) {
            Py_XDECREF(t);
            unlock(self);
            goto done;
        }
        Py_DECREF(t);
    }
    l->nmaclog = 0;
    dev = Py_BuildValue("(KKKKKKKKKKKKKKKK)", (unsigned long long)l->st.rx_datagrams,
                        (unsigned long long)l->st.rx_bytes,
                        (unsigned long long)l->st.udp_send_blocked,
                        (unsigned long long)l->st.udp_send_failed,
                        (unsigned long long)l->st.udp_send_too_big,
                        (unsigned long long)l->st.wakeups, (unsigned long long)l->st.maclog_lost,
                        (unsigned long long)l->st.gso_refused,
                        (unsigned long long)l->st.udp_truncated,
                        (unsigned long long)l->st.drop_malformed,
                        (unsigned long long)l->st.drop_unknown_index,
                        (unsigned long long)l->st.drop_mac1,
                        (unsigned long long)l->st.hs_queued, (unsigned long long)l->st.hs_shed,
                        (unsigned long long)l->st.udp_errors,
                        (unsigned long long)l->st.mtu_reports);
    uint64_t wakeups = l->st.wakeups;
    memset(&l->st, 0, sizeof l->st);
    l->st.wakeups = wakeups;
    unlock(self);
    if (dev)
        result = Py_BuildValue("(OOO)", dev, ports, macs);
done:
    Py_XDECREF(dev);
    Py_XDECREF(ports);
    Py_XDECREF(macs);
    return result;
}

static PyObject *Lane_set_mac1_key(LaneObject *self, PyObject *args) {
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "y*", &key))
        return NULL;
    if (check_ready(self) < 0 || key.len != BN_MAC1_KEY_LEN) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "the mac1 key is %d bytes", BN_MAC1_KEY_LEN);
        PyBuffer_Release(&key);
        return NULL;
    }
    lock(self);
    memcpy(self->l->mac1_key, key.buf, BN_MAC1_KEY_LEN);
    self->l->has_mac1_key = 1;
    unlock(self);
    PyBuffer_Release(&key);
    Py_RETURN_NONE;
}

static PyObject *Lane_set_python_indexes(LaneObject *self, PyObject *args) {
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "O", &seq))
        return NULL;
    if (check_ready(self) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "indexes must be a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    uint32_t got[BN_MAX_PY_INDEXES];
    int k = 0;
    for (Py_ssize_t i = 0; i < n && k < BN_MAX_PY_INDEXES; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred() || v > UINT32_MAX) {
            Py_DECREF(fast);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "an index is 32 bits");
            return NULL;
        }
        got[k++] = (uint32_t)v;
    }
    Py_DECREF(fast);
    lock(self);
    memcpy(self->l->py_index, got, (size_t)k * sizeof got[0]);
    self->l->npy_index = k;
    unlock(self);
    Py_RETURN_NONE;
}

static PyObject *Lane_learn(LaneObject *self, PyObject *args) {
    int port;
    PyObject *frames;
    if (!PyArg_ParseTuple(args, "iO", &port, &frames))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(frames, "frames must be a sequence");
    if (!fast)
        return NULL;
    lock(self);
    bn_port *p = &self->l->ports[port];
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *f = PySequence_Fast_GET_ITEM(fast, i);
        if (PyBytes_Check(f) && PyBytes_GET_SIZE(f) >= BN_ETH_HLEN)
            bn_macset_add(&p->known, (const uint8_t *)PyBytes_AS_STRING(f) + 6);
    }
    unlock(self);
    Py_DECREF(fast);
    Py_RETURN_NONE;
}

static PyObject *Lane_forget(LaneObject *self, PyObject *args) {
    int port;
    PyObject *macs;
    if (!PyArg_ParseTuple(args, "iO", &port, &macs))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(macs, "macs must be a sequence");
    if (!fast)
        return NULL;
    lock(self);
    bn_port *p = &self->l->ports[port];
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        PyObject *m = PySequence_Fast_GET_ITEM(fast, i);
        if (PyBytes_Check(m) && PyBytes_GET_SIZE(m) == 6)
            bn_macset_del(&p->known, (const uint8_t *)PyBytes_AS_STRING(m));
    }
    unlock(self);
    Py_DECREF(fast);
    Py_RETURN_NONE;
}

static PyObject *Lane_knows(LaneObject *self, PyObject *args) {
    int port;
    Py_buffer mac;
    if (!PyArg_ParseTuple(args, "iy*", &port, &mac))
        return NULL;
    if (check_port(self, port) < 0 || mac.len != 6) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a MAC is 6 bytes");
        PyBuffer_Release(&mac);
        return NULL;
    }
    lock(self);
    int known = bn_macset_has(&self->l->ports[port].known, mac.buf);
    unlock(self);
    PyBuffer_Release(&mac);
    return PyBool_FromLong(known);
}

/* Test entry points: the loop's per-read steps without the loop. */
static PyObject *Lane_tap_read(LaneObject *self, PyObject *args) {
    int port;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iy*", &port, &b))
        return NULL;
    if (check_port(self, port) < 0 || (size_t)b.len > BN_READ_SIZE) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "read too large");
        PyBuffer_Release(&b);
        return NULL;
    }
    lock(self);
    bn_lane *l = self->l;
    memcpy(l->rbuf, b.buf, (size_t)b.len);
    int done = bn_lane_tap_read(l, port, l->rbuf, (size_t)b.len);
    unlock(self);
    PyBuffer_Release(&b);
    return PyBool_FromLong(done);
}

static PyObject *Lane_flush_tx(LaneObject *self, PyObject *args) {
    int port;
    if (!PyArg_ParseTuple(args, "i", &port))
        return NULL;
    if (check_port(self, port) < 0)
        return NULL;
    lock(self);
    bn_lane *l = self->l;
    /* the datagrams sealed so far, as bytes (and sent, if the lane has a socket) */
    PyObject *list = PyList_New(l->ntx);
    for (int i = 0; list && i < l->ntx; i++) {
        PyObject *d = PyBytes_FromStringAndSize((const char *)l->tbuf + l->toffs[i], l->tlens[i]);
        if (!d) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, d);
    }
    bn_lane_tx_flush_port(l, port);
    unlock(self);
    return list;
}

static PyObject *Lane_udp_receive(LaneObject *self, PyObject *args) {
    PyObject *seq, *addr;
    int gso_size = 0;
    if (!PyArg_ParseTuple(args, "OO|i", &seq, &addr, &gso_size))
        return NULL;
    struct sockaddr_storage ss;
    socklen_t len;
    if (check_ready(self) < 0 || to_sockaddr(addr, &ss, &len) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "datagrams must be a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(d) || (size_t)PyBytes_GET_SIZE(d) > BN_READ_SIZE) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "datagrams must be bytes of at most 66560");
            return NULL;
        }
    }
    lock(self);
    bn_lane *l = self->l;
    Py_ssize_t consumed = 0;
    for (; consumed < n && !l->udp_held; consumed++) {
        PyObject *d = PySequence_Fast_GET_ITEM(fast, consumed);
        size_t dlen = (size_t)PyBytes_GET_SIZE(d);
        if (l->rbuf_used + BN_READ_SIZE > l->rbuf_cap)
            bn_lane_flush(l);
        uint8_t *buf = l->rbuf + l->rbuf_used;
        memcpy(buf, PyBytes_AS_STRING(d), dlen);
        l->rbuf_used += (dlen + 15) & ~(size_t)15;
        bn_lane_udp_receive(l, buf, dlen, gso_size, &ss, len);
    }
    bn_lane_flush(l);
    unlock(self);
    Py_DECREF(fast);
    return PyLong_FromSsize_t(consumed);
}

static PyObject *Lane_get_punt_fd(LaneObject *self, void *closure) {
    if (check_ready(self) < 0)
        return NULL;
    return PyLong_FromLong(self->l->punt_fd);
}

static PyObject *Lane_get_error_port(LaneObject *self, void *closure) {
    return PyLong_FromLong(self->error_port);
}

static PyObject *Lane_get_gso(LaneObject *self, void *closure) {
    if (check_ready(self) < 0)
        return NULL;
    return PyBool_FromLong(self->l->gso);
}

static PyObject *Lane_get_held(LaneObject *self, void *closure) {
    if (check_ready(self) < 0)
        return NULL;
    PyObject *t = PyList_New(0);
    lock(self);
    if (t && self->l->udp_held) {
        PyObject *v = PyLong_FromLong(-1);
        PyList_Append(t, v);
        Py_XDECREF(v);
    }
    for (int i = 0; t && i < BN_MAX_PORTS; i++) {
        if (self->l->ports[i].used && self->l->ports[i].held) {
            PyObject *v = PyLong_FromLong(i);
            PyList_Append(t, v);
            Py_XDECREF(v);
        }
    }
    unlock(self);
    return t;
}

static PyMethodDef Lane_methods[] = {
    {"run", (PyCFunction)Lane_run, METH_NOARGS, "The loop (GIL released) until stop()."},
    {"stop", (PyCFunction)Lane_stop, METH_NOARGS, "Make run() return (any thread)."},
    {"reset", (PyCFunction)Lane_reset, METH_NOARGS,
     "Forget an earlier stop() before run() is called again."},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "Free the lane (not while running)."},
    {"lock", (PyCFunction)Lane_lock, METH_NOARGS, "Take the lane's mutex (recursive)."},
    {"unlock", (PyCFunction)Lane_unlock, METH_NOARGS, "Release the lane's mutex."},
    {"add_port", (PyCFunction)Lane_add_port, METH_VARARGS,
     "add_port(fd, vnet, guard_cfg | None) -> port id"},
    {"remove_port", (PyCFunction)Lane_remove_port, METH_VARARGS, "remove_port(id)"},
    {"set_udp_join", (PyCFunction)Lane_set_udp_join, METH_VARARGS,
     "set_udp_join(port, on): join UDP datagram runs into UDP_L4 superframes"},
    {"lend", (PyCFunction)Lane_lend, METH_VARARGS,
     "lend(port, nd, other) -> (nd, other): storm-bucket tokens for flooded frames the lane "
     "passes itself (ND share, the rest); the port's credit after"},
    {"set_port", (PyCFunction)(void (*)(void))Lane_set_port, METH_VARARGS | METH_KEYWORDS,
     "set_port(port, send, endpoint, fits_plain, fits_csum, room, max_frame, blocked)"},
    {"set_rx", (PyCFunction)Lane_set_rx, METH_VARARGS, "set_rx(port, sessions)"},
    {"release", (PyCFunction)Lane_release, METH_VARARGS,
     "release(port): give a handed-over fd back to the lane (-1: the UDP socket)"},
    {"take_punts", (PyCFunction)Lane_take_punts, METH_NOARGS, "The queued hand-overs, in order."},
    {"take_stats", (PyCFunction)Lane_take_stats, METH_NOARGS,
     "(device, ports, macs) since the last take; zeroes them"},
    {"set_mac1_key", (PyCFunction)Lane_set_mac1_key, METH_VARARGS,
     "set_mac1_key(key): HASH(LABEL_MAC1 || our public key); mac1 is checked from now on"},
    {"set_python_indexes", (PyCFunction)Lane_set_python_indexes, METH_VARARGS,
     "set_python_indexes(indexes): transport indexes Python holds (others are unknown)"},
    {"learn", (PyCFunction)Lane_learn, METH_VARARGS,
     "learn(port, frames): their source MACs are behind the port's peer"},
    {"forget", (PyCFunction)Lane_forget, METH_VARARGS,
     "forget(port, macs): these MACs are no longer known behind the port's peer"},
    {"knows", (PyCFunction)Lane_knows, METH_VARARGS,
     "knows(port, mac) -> the MAC is in the port's known set (test entry point)"},
    {"tap_read", (PyCFunction)Lane_tap_read, METH_VARARGS,
     "tap_read(port, data) -> handled (test entry point)"},
    {"flush_tx", (PyCFunction)Lane_flush_tx, METH_VARARGS,
     "flush_tx(port) -> the datagrams sealed since the last flush (test entry point)"},
    {"udp_receive", (PyCFunction)Lane_udp_receive, METH_VARARGS,
     "udp_receive(datagrams, sockaddr, gso_size=0) -> how many were taken before the "
     "socket was handed over (test entry point; with gso_size, one GRO buffer)"},
    {NULL}};

static PyGetSetDef Lane_getset[] = {
    {"punt_fd", (getter)Lane_get_punt_fd, NULL, "eventfd readable when hand-overs wait", NULL},
    {"error_port", (getter)Lane_get_error_port, NULL, "port of run()'s fatal error (-1: UDP)",
     NULL},
    {"gso", (getter)Lane_get_gso, NULL, "UDP GSO still in use", NULL},
    {"held", (getter)Lane_get_held, NULL, "ports (and -1: UDP) handed over to Python", NULL},
    {NULL}};

static PyTypeObject Lane_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bridger.native._lane.Lane",
    .tp_basicsize = sizeof(LaneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One native lane (see bridger/native/src/bn_lane.h).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_getset = Lane_getset,
};

int bn_py_lane_add(PyObject *module) {
    if (PyType_Ready(&Lane_Type) < 0)
        return -1;
    Py_INCREF(&Lane_Type);
    if (PyModule_AddObject(module, "Lane", (PyObject *)&Lane_Type) < 0) {
        Py_DECREF(&Lane_Type);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "MAX_PORTS", BN_MAX_PORTS) < 0)
        return -1;
    struct {
        const char *name;
        const char *const *fields;
    } lists[] = {{"PORT_STAT_FIELDS", PORT_STAT_FIELDS}, {"LANE_STAT_FIELDS", LANE_STAT_FIELDS},
                 {"DIR_FIELDS", DIR_FIELDS}, {"MACLOG_FIELDS", MACLOG_FIELDS}};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        Py_ssize_t n = 0;
        while (lists[i].fields[n])
            n++;
        PyObject *t = PyTuple_New(n);
        if (!t)
            return -1;
        for (Py_ssize_t k = 0; k < n; k++) {
            PyObject *name = PyUnicode_FromString(lists[i].fields[k]);
            if (!name) {
                Py_DECREF(t);
                return -1;
            }
            PyTuple_SET_ITEM(t, k, name);
        }
        if (PyModule_AddObject(module, lists[i].name, t) < 0) {
            Py_DECREF(t);
            return -1;
        }
    }
    return 0;
}
