/* JWS signatures, RS256 (RSASSA-PKCS1-v1_5 SHA-256) and ES256 (ECDSA P-256 SHA-256),
 * computed on native threads.
 *
 * CPython lets go of the GIL while OpenSSL computes a signature, but a Python thread
 * has to take the GIL back to return the signature, and on an event loop that is never
 * idle that hand-off costs more CPU than the signature it moved. The threads here are
 * POSIX threads that never enter the interpreter: the event loop queues signing inputs,
 * an eventfd becomes readable when signatures are finished, and the loop collects them
 * all in one call. No maintained library offers signing that way, so it is written here,
 * kept to the two algorithms this server signs tokens with.
 *
 * A Pool holds one private key. Its methods are called with the GIL held and take the
 * pool's mutex only to move jobs between lists; the workers take nothing else.
 */

#define _GNU_SOURCE /* pthread_setname_np */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/x509.h>

#define MAX_THREADS 64
#define LOWEST_PRIORITY 19 /* the highest nice value */
/* The name `top -H`, py-spy and /proc/PID/task/TID/comm show for the workers. */
#define THREAD_NAME "fleetid-sign"
/* RFC 7518 §3.4: an ES256 signature is R and S, each as 32 octets, concatenated. */
#define P256_COORDINATE_BYTES 32

typedef struct job {
    struct job *next;
    unsigned long long ticket;
    unsigned char *signature; /* NULL when signing failed */
    size_t signature_length;
    size_t length;
    unsigned char data[];
} job;

typedef struct {
    PyObject_HEAD
    EVP_PKEY *key;
    int ecdsa; /* a P-256 key: signatures leave as R || S, not as OpenSSL's DER */
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    job *queued;      /* first to sign */
    job *queued_last; /* where submit appends */
    job *finished;    /* any order: each carries its ticket */
    int event_fd;
    int stopping;
    int thread_count;
    int niceness; /* how many nice levels each worker drops below the thread that made it */
    pthread_t threads[MAX_THREADS];
} Pool;

/* The DER ECDSA signature OpenSSL makes, as R || S; NULL when it is not one. */
static unsigned char *ecdsa_der_to_jws(const unsigned char *der, size_t length) {
    const unsigned char *cursor = der;
    ECDSA_SIG *parsed = d2i_ECDSA_SIG(NULL, &cursor, (long)length);
    if (parsed == NULL) {
        return NULL;
    }
    const BIGNUM *r = NULL;
    const BIGNUM *s = NULL;
    ECDSA_SIG_get0(parsed, &r, &s);
    unsigned char *jws = malloc(2 * P256_COORDINATE_BYTES);
    /* RFC 7518 §3.4: the octets "MUST NOT be shortened to omit any leading zero octets". */
    if (jws != NULL && (BN_bn2binpad(r, jws, P256_COORDINATE_BYTES) != P256_COORDINATE_BYTES ||
                        BN_bn2binpad(s, jws + P256_COORDINATE_BYTES, P256_COORDINATE_BYTES) !=
                            P256_COORDINATE_BYTES)) {
        free(jws);
        jws = NULL;
    }
    ECDSA_SIG_free(parsed);
    return jws;
}

static void sign_job(const Pool *pool, EVP_MD_CTX *context, job *item) {
    size_t length = 0;
    item->signature = NULL;
    if (context == NULL) {
        return;
    }
    if (EVP_DigestSignInit(context, NULL, EVP_sha256(), NULL, pool->key) == 1 &&
        EVP_DigestSign(context, NULL, &length, item->data, item->length) == 1) {
        item->signature = malloc(length);
        if (item->signature != NULL &&
            EVP_DigestSign(context, item->signature, &length, item->data, item->length) != 1) {
            free(item->signature);
            item->signature = NULL;
        }
        item->signature_length = length;
    }
    EVP_MD_CTX_reset(context);
    if (pool->ecdsa && item->signature != NULL) {
        unsigned char *jws = ecdsa_der_to_jws(item->signature, item->signature_length);
        free(item->signature);
        item->signature = jws;
        item->signature_length = 2 * P256_COORDINATE_BYTES;
    }
}

/* What Pool_init accepts: an RSA key, or an EC key on P-256. */
static int key_kind(EVP_PKEY *key, int *ecdsa) {
    switch (EVP_PKEY_get_base_id(key)) {
    case EVP_PKEY_RSA:
        *ecdsa = 0;
        return 0;
    case EVP_PKEY_EC: {
        char curve[32];
        size_t curve_length = 0;
        if (EVP_PKEY_get_group_name(key, curve, sizeof curve, &curve_length) == 1 &&
            strcmp(curve, SN_X9_62_prime256v1) == 0) {
            *ecdsa = 1;
            return 0;
        }
        return -1;
    }
    default:
        return -1;
    }
}

/* Linux keeps a nice value per thread, so a worker can give way to the event loop that feeds
 * it. This is best effort: a worker that keeps its priority still signs. */
static void lower_priority(int levels) {
    if (levels <= 0) {
        return;
    }
    id_t thread = (id_t)syscall(SYS_gettid);
    errno = 0;
    int current = getpriority(PRIO_PROCESS, thread);
    if (current == -1 && errno != 0) {
        return;
    }
    int wanted = current + levels;
    (void)setpriority(PRIO_PROCESS, thread, wanted > LOWEST_PRIORITY ? LOWEST_PRIORITY : wanted);
}

static void *work(void *argument) {
    Pool *pool = argument;
    EVP_MD_CTX *context = EVP_MD_CTX_new();
    lower_priority(pool->niceness);

    for (;;) {
        pthread_mutex_lock(&pool->mutex);
        while (pool->queued == NULL && !pool->stopping) {
            pthread_cond_wait(&pool->wake, &pool->mutex);
        }
        job *item = pool->queued;
        if (item == NULL) {
            /* Stopping, and nothing is left to sign: every submitted job gets an answer. */
            pthread_mutex_unlock(&pool->mutex);
            break;
        }
        pool->queued = item->next;
        if (pool->queued == NULL) {
            pool->queued_last = NULL;
        }
        pthread_mutex_unlock(&pool->mutex);

        sign_job(pool, context, item);

        pthread_mutex_lock(&pool->mutex);
        int was_empty = pool->finished == NULL;
        item->next = pool->finished;
        pool->finished = item;
        pthread_mutex_unlock(&pool->mutex);
        if (was_empty) {
            /* One wake-up per batch: the collector takes everything finished so far. */
            uint64_t one = 1;
            ssize_t written;
            do {
                written = write(pool->event_fd, &one, sizeof one);
            } while (written < 0 && errno == EINTR);
        }
    }
    EVP_MD_CTX_free(context);
    return NULL;
}

static void free_jobs(job *item) {
    while (item != NULL) {
        job *next = item->next;
        if (item->signature != NULL) {
            free(item->signature);
        }
        OPENSSL_cleanse(item->data, item->length);
        free(item);
        item = next;
    }
}

/* Stop the workers after they have signed everything queued, and wait for them. */
static void stop(Pool *pool) {
    if (pool->thread_count == 0) {
        return;
    }
    pthread_mutex_lock(&pool->mutex);
    pool->stopping = 1;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);

    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < pool->thread_count; i++) {
        pthread_join(pool->threads[i], NULL);
    }
    Py_END_ALLOW_THREADS
    pool->thread_count = 0;
}

static int Pool_init(Pool *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"key_der", "threads", "niceness", NULL};
    Py_buffer der;
    int threads = 1;
    int niceness = 0;

    if (self->key != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a Pool is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|i$i", names, &der, &threads, &niceness)) {
        return -1;
    }
    if (threads < 1 || threads > MAX_THREADS) {
        PyBuffer_Release(&der);
        PyErr_Format(PyExc_ValueError, "threads must be between 1 and %d", MAX_THREADS);
        return -1;
    }
    if (niceness < 0 || niceness > LOWEST_PRIORITY) {
        PyBuffer_Release(&der);
        PyErr_Format(PyExc_ValueError, "niceness must be between 0 and %d", LOWEST_PRIORITY);
        return -1;
    }
    const unsigned char *cursor = der.buf;
    EVP_PKEY *key = d2i_AutoPrivateKey(NULL, &cursor, (long)der.len);
    PyBuffer_Release(&der);
    if (key == NULL) {
        PyErr_SetString(PyExc_ValueError, "key_der is not a DER-encoded private key");
        return -1;
    }
    int ecdsa = 0;
    if (key_kind(key, &ecdsa) < 0) {
        EVP_PKEY_free(key);
        PyErr_SetString(PyExc_ValueError, "the key must be an RSA or a P-256 private key");
        return -1;
    }

    self->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->event_fd < 0) {
        EVP_PKEY_free(key);
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->key = key;
    self->ecdsa = ecdsa;
    self->niceness = niceness;
    pthread_mutex_init(&self->mutex, NULL);
    pthread_cond_init(&self->wake, NULL);

    for (int i = 0; i < threads; i++) {
        int failed = pthread_create(&self->threads[i], NULL, work, self);
        if (failed) {
            stop(self);
            errno = failed;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        self->thread_count = i + 1;
        pthread_setname_np(self->threads[i], THREAD_NAME);
    }
    return 0;
}

static void Pool_dealloc(Pool *self) {
    stop(self);
    if (self->key != NULL) {
        free_jobs(self->queued);
        free_jobs(self->finished);
        EVP_PKEY_free(self->key);
        close(self->event_fd);
        pthread_cond_destroy(&self->wake);
        pthread_mutex_destroy(&self->mutex);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_open(Pool *self) {
    if (self->key == NULL || self->stopping) {
        PyErr_SetString(PyExc_ValueError, "the signing pool is closed");
        return -1;
    }
    return 0;
}

static PyObject *Pool_submit(Pool *self, PyObject *args) {
    unsigned long long ticket;
    Py_buffer data;

    if (!PyArg_ParseTuple(args, "Ky*", &ticket, &data)) {
        return NULL;
    }
    if (check_open(self) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    job *item = malloc(sizeof(job) + (size_t)data.len);
    if (item == NULL) {
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    item->next = NULL;
    item->ticket = ticket;
    item->signature = NULL;
    item->signature_length = 0;
    item->length = (size_t)data.len;
    memcpy(item->data, data.buf, item->length);
    PyBuffer_Release(&data);

    pthread_mutex_lock(&self->mutex);
    if (self->queued_last != NULL) {
        self->queued_last->next = item;
    } else {
        self->queued = item;
    }
    self->queued_last = item;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

static PyObject *Pool_collect(Pool *self, PyObject *Py_UNUSED(ignored)) {
    if (self->key == NULL) {
        return PyList_New(0);
    }
    /* Read the eventfd before taking the list: a signature finished after the read
     * either is in the list taken now or sets the eventfd again. */
    uint64_t count;
    while (read(self->event_fd, &count, sizeof count) < 0 && errno == EINTR) {
    }

    pthread_mutex_lock(&self->mutex);
    job *finished = self->finished;
    self->finished = NULL;
    pthread_mutex_unlock(&self->mutex);

    PyObject *results = PyList_New(0);
    for (job *item = finished; results != NULL && item != NULL; item = item->next) {
        PyObject *pair;
        if (item->signature != NULL) {
            pair = Py_BuildValue(
                "(Ky#)", item->ticket, item->signature, (Py_ssize_t)item->signature_length
            );
        } else {
            pair = Py_BuildValue("(KO)", item->ticket, Py_None);
        }
        if (pair == NULL || PyList_Append(results, pair) < 0) {
            Py_XDECREF(pair);
            Py_CLEAR(results);
            break;
        }
        Py_DECREF(pair);
    }
    free_jobs(finished);
    return results;
}

static PyObject *Pool_fileno(Pool *self, PyObject *Py_UNUSED(ignored)) {
    if (check_open(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->event_fd);
}

static PyObject *Pool_close(Pool *self, PyObject *Py_UNUSED(ignored)) {
    stop(self);
    Py_RETURN_NONE;
}

static PyMethodDef Pool_methods[] = {
    {"submit", (PyCFunction)Pool_submit, METH_VARARGS,
     "submit(ticket, data): queue `data` to be signed; collect() returns it with `ticket`."},
    {"collect", (PyCFunction)Pool_collect, METH_NOARGS,
     "collect() -> [(ticket, signature or None)]: the signatures finished since last time."},
    {"fileno", (PyCFunction)Pool_fileno, METH_NOARGS,
     "fileno() -> the eventfd that is readable while finished signatures wait."},
    {"close", (PyCFunction)Pool_close, METH_NOARGS,
     "close(): sign what is queued, stop the threads; collect() still returns the rest."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fleetid.keys._signpool.Pool",
    .tp_doc = "Pool(key_der, threads=1, *, niceness=0): RS256 or ES256 signatures with one RSA or\n"
               "P-256 key on native threads, each running `niceness` nice levels below the thread\n"
               "that made it. ES256 signatures come back as R || S (RFC 7518 section 3.4).",
    .tp_basicsize = sizeof(Pool),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pool_init,
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_methods = Pool_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fleetid.keys._signpool",
    .m_doc = "RS256 and ES256 signatures computed on native threads that never take the GIL.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__signpool(void) {
    if (PyType_Ready(&PoolType) < 0) {
        return NULL;
    }
    PyObject *created = PyModule_Create(&module);
    if (created == NULL) {
        return NULL;
    }
    Py_INCREF(&PoolType);
    if (PyModule_AddObject(created, "Pool", (PyObject *)&PoolType) < 0) {
        Py_DECREF(&PoolType);
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
