/* hallway._irkscan: IRK trials for resolvable private addresses, all keys in one buffer.
 *
 * A KeySet holds the expanded AES-128 key schedules of many IRKs in one contiguous buffer
 * (176 bytes a key: 11 round keys of 16 bytes, FIPS-197 byte order). find() answers the index
 * of the first key whose ah(IRK, prand) -- the last 3 bytes of AES-128(IRK, 13 zero bytes ||
 * prand) -- equals a resolvable private address's hash; match() runs one key over many cached
 * addresses' blocks. Removal moves the last key into the freed index (the Python side mirrors
 * it), so the buffer stays dense.
 *
 * Two AES implementations, the same answers:
 *   - AES-NI (x86 CPUs with the AES instructions, checked at run time with CPUID; the
 *     functions are compiled with a target attribute, so the module builds and runs on any
 *     x86 or ARM CPU). find() runs 8 keys at a time so the AES units stay busy.
 *   - portable C: one 1 KiB table of the combined SubBytes/MixColumns column, built at import
 *     from the S-box, which is itself computed from GF(2^8) arithmetic (multiplicative inverse
 *     and the affine map of FIPS-197 5.1.1). Table lookups take key-dependent time in the cache
 *     (the classic table AES side channel): see docs/performance.md.
 *
 * Keys never leave the module: no buffer protocol, no getter, no key bytes in errors or the
 * repr; freed and removed schedules are zeroed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#if defined(__GNUC__) || defined(__clang__)
#define HAVE_NI_CODE 1
#include <cpuid.h>
#include <emmintrin.h>
#include <wmmintrin.h>
#endif
#endif

#define SCHED 176 /* bytes of one expanded key */
#define ROUNDS 10

/* -- portable AES: tables computed from the field arithmetic -------------------------------- */

static uint8_t sbox[256];
static uint32_t te[256]; /* column of SubBytes then MixColumns: (2s, s, s, 3s), big-endian */

static uint8_t gf_mul(uint8_t a, uint8_t b)
{
    /* GF(2^8) product modulo x^8 + x^4 + x^3 + x + 1 */
    uint8_t p = 0;
    while (b) {
        if (b & 1)
            p ^= a;
        a = (uint8_t)((a << 1) ^ ((a & 0x80) ? 0x1B : 0));
        b >>= 1;
    }
    return p;
}

static uint8_t rotl8(uint8_t x, int n) { return (uint8_t)((x << n) | (x >> (8 - n))); }

static void build_tables(void)
{
    for (int a = 0; a < 256; a++) {
        uint8_t inv = 0; /* 0 has no inverse; FIPS-197 maps it to 0 */
        for (int b = 1; b < 256 && a; b++) {
            if (gf_mul((uint8_t)a, (uint8_t)b) == 1) {
                inv = (uint8_t)b;
                break;
            }
        }
        /* affine map: b ^ rotl(b,1) ^ rotl(b,2) ^ rotl(b,3) ^ rotl(b,4) ^ 0x63 */
        sbox[a] = (uint8_t)(inv ^ rotl8(inv, 1) ^ rotl8(inv, 2) ^ rotl8(inv, 3) ^ rotl8(inv, 4)
                            ^ 0x63);
    }
    for (int x = 0; x < 256; x++) {
        uint8_t s = sbox[x];
        uint8_t s2 = gf_mul(s, 2), s3 = gf_mul(s, 3);
        te[x] = ((uint32_t)s2 << 24) | ((uint32_t)s << 16) | ((uint32_t)s << 8) | s3;
    }
}

static void expand_key(const uint8_t key[16], uint8_t out[SCHED])
{
    uint8_t rcon = 1;
    memcpy(out, key, 16);
    for (int i = 4; i < 44; i++) {
        uint8_t t[4];
        memcpy(t, out + 4 * (i - 1), 4);
        if (i % 4 == 0) {
            uint8_t first = t[0];
            t[0] = (uint8_t)(sbox[t[1]] ^ rcon);
            t[1] = sbox[t[2]];
            t[2] = sbox[t[3]];
            t[3] = sbox[first];
            rcon = gf_mul(rcon, 2);
        }
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(out[4 * (i - 4) + j] ^ t[j]);
    }
}

static uint32_t load_be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* The last 3 bytes of AES-128(key, block), as (b13 << 16) | (b14 << 8) | b15. */
static uint32_t tail_portable(const uint8_t *rk, const uint8_t block[16])
{
    uint32_t s0 = load_be(block) ^ load_be(rk);
    uint32_t s1 = load_be(block + 4) ^ load_be(rk + 4);
    uint32_t s2 = load_be(block + 8) ^ load_be(rk + 8);
    uint32_t s3 = load_be(block + 12) ^ load_be(rk + 12);
    for (int r = 1; r < ROUNDS; r++) {
        const uint8_t *k = rk + 16 * r;
        uint32_t t0 = te[s0 >> 24] ^ ror32(te[(s1 >> 16) & 0xFF], 8)
                      ^ ror32(te[(s2 >> 8) & 0xFF], 16) ^ ror32(te[s3 & 0xFF], 24) ^ load_be(k);
        uint32_t t1 = te[s1 >> 24] ^ ror32(te[(s2 >> 16) & 0xFF], 8)
                      ^ ror32(te[(s3 >> 8) & 0xFF], 16) ^ ror32(te[s0 & 0xFF], 24)
                      ^ load_be(k + 4);
        uint32_t t2 = te[s2 >> 24] ^ ror32(te[(s3 >> 16) & 0xFF], 8)
                      ^ ror32(te[(s0 >> 8) & 0xFF], 16) ^ ror32(te[s1 & 0xFF], 24)
                      ^ load_be(k + 8);
        uint32_t t3 = te[s3 >> 24] ^ ror32(te[(s0 >> 16) & 0xFF], 8)
                      ^ ror32(te[(s1 >> 8) & 0xFF], 16) ^ ror32(te[s2 & 0xFF], 24)
                      ^ load_be(k + 12);
        s0 = t0;
        s1 = t1;
        s2 = t2;
        s3 = t3;
    }
    /* last round (no MixColumns), only column 3's last three bytes */
    uint32_t last = ((uint32_t)sbox[(s0 >> 16) & 0xFF] << 16) | ((uint32_t)sbox[(s1 >> 8) & 0xFF] << 8)
                    | sbox[s2 & 0xFF];
    return (last ^ load_be(rk + 16 * ROUNDS + 12)) & 0xFFFFFF;
}

/* -- AES-NI ------------------------------------------------------------------------------- */

static int cpu_has_aesni = 0;

#ifdef HAVE_NI_CODE
static int detect_aesni(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    return (c & bit_AES) && (d & bit_SSE2);
}

__attribute__((target("sse2,aes"))) static inline uint32_t ni_tail(__m128i x)
{
    /* bytes 13..15 of the block as (b13 << 16) | (b14 << 8) | b15 */
    uint32_t w = (uint32_t)_mm_cvtsi128_si32(_mm_srli_si128(x, 12)); /* b12 | b13<<8 | ... */
    return ((w >> 8) & 0xFF) << 16 | ((w >> 16) & 0xFF) << 8 | (w >> 24);
}

__attribute__((target("sse2,aes"))) static Py_ssize_t
find_ni(const uint8_t *keys, Py_ssize_t start, Py_ssize_t stop, const uint8_t block[16],
        uint32_t want)
{
    const __m128i in = _mm_loadu_si128((const __m128i *)block);
    Py_ssize_t i = start;
    for (; i + 8 <= stop; i += 8) {
        const uint8_t *k = keys + (size_t)i * SCHED;
        __m128i x[8];
        for (int j = 0; j < 8; j++)
            x[j] = _mm_xor_si128(in, _mm_loadu_si128((const __m128i *)(k + j * SCHED)));
        for (int r = 1; r < ROUNDS; r++)
            for (int j = 0; j < 8; j++)
                x[j] = _mm_aesenc_si128(
                    x[j], _mm_loadu_si128((const __m128i *)(k + j * SCHED + 16 * r)));
        for (int j = 0; j < 8; j++)
            x[j] = _mm_aesenclast_si128(
                x[j], _mm_loadu_si128((const __m128i *)(k + j * SCHED + 16 * ROUNDS)));
        for (int j = 0; j < 8; j++)
            if (ni_tail(x[j]) == want)
                return i + j;
    }
    for (; i < stop; i++) {
        const uint8_t *k = keys + (size_t)i * SCHED;
        __m128i x = _mm_xor_si128(in, _mm_loadu_si128((const __m128i *)k));
        for (int r = 1; r < ROUNDS; r++)
            x = _mm_aesenc_si128(x, _mm_loadu_si128((const __m128i *)(k + 16 * r)));
        x = _mm_aesenclast_si128(x, _mm_loadu_si128((const __m128i *)(k + 16 * ROUNDS)));
        if (ni_tail(x) == want)
            return i;
    }
    return -1;
}

__attribute__((target("sse2,aes"))) static int
match_ni(const uint8_t *k, const uint8_t *blocks, const uint8_t *hashes, Py_ssize_t count,
         PyObject *out)
{
    __m128i rk[ROUNDS + 1];
    for (int r = 0; r <= ROUNDS; r++)
        rk[r] = _mm_loadu_si128((const __m128i *)(k + 16 * r));
    Py_ssize_t n = 0;
    for (; n + 4 <= count; n += 4) {
        __m128i x[4];
        for (int j = 0; j < 4; j++)
            x[j] = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(blocks + 16 * (n + j))), rk[0]);
        for (int r = 1; r < ROUNDS; r++)
            for (int j = 0; j < 4; j++)
                x[j] = _mm_aesenc_si128(x[j], rk[r]);
        for (int j = 0; j < 4; j++) {
            x[j] = _mm_aesenclast_si128(x[j], rk[ROUNDS]);
            const uint8_t *h = hashes + 3 * (n + j);
            if (ni_tail(x[j]) == (((uint32_t)h[0] << 16) | ((uint32_t)h[1] << 8) | h[2])) {
                PyObject *slot = PyLong_FromSsize_t(n + j);
                if (slot == NULL || PyList_Append(out, slot) < 0) {
                    Py_XDECREF(slot);
                    return -1;
                }
                Py_DECREF(slot);
            }
        }
    }
    for (; n < count; n++) {
        __m128i x = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(blocks + 16 * n)), rk[0]);
        for (int r = 1; r < ROUNDS; r++)
            x = _mm_aesenc_si128(x, rk[r]);
        x = _mm_aesenclast_si128(x, rk[ROUNDS]);
        const uint8_t *h = hashes + 3 * n;
        if (ni_tail(x) == (((uint32_t)h[0] << 16) | ((uint32_t)h[1] << 8) | h[2])) {
            PyObject *slot = PyLong_FromSsize_t(n);
            if (slot == NULL || PyList_Append(out, slot) < 0) {
                Py_XDECREF(slot);
                return -1;
            }
            Py_DECREF(slot);
        }
    }
    return 0;
}
#endif

/* -- the KeySet type ---------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    uint8_t *keys;     /* count * SCHED bytes in use, capacity * SCHED allocated */
    Py_ssize_t count;
    Py_ssize_t capacity;
    int hardware;      /* 1: AES-NI, 0: portable */
} KeySet;

static void wipe(void *p, size_t n)
{
    volatile uint8_t *v = (volatile uint8_t *)p;
    while (n--)
        *v++ = 0;
}

static int keyset_init(KeySet *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"portable", NULL};
    int portable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$p:KeySet", kwlist, &portable))
        return -1;
    if (self->keys != NULL) {
        wipe(self->keys, (size_t)self->capacity * SCHED);
        PyMem_Free(self->keys);
        self->keys = NULL;
    }
    self->count = self->capacity = 0;
    self->hardware = cpu_has_aesni && !portable;
    return 0;
}

static void keyset_dealloc(KeySet *self)
{
    if (self->keys != NULL) {
        wipe(self->keys, (size_t)self->capacity * SCHED);
        PyMem_Free(self->keys);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *keyset_repr(KeySet *self)
{
    return PyUnicode_FromFormat("<KeySet of %zd keys, %s>", self->count,
                                self->hardware ? "aes-ni" : "portable");
}

static Py_ssize_t keyset_len(KeySet *self) { return self->count; }

static int resize(KeySet *self, Py_ssize_t cap)
{
    if (cap < self->count || cap > PY_SSIZE_T_MAX / SCHED) {
        PyErr_NoMemory();
        return -1;
    }
    uint8_t *fresh = PyMem_Malloc((size_t)cap * SCHED);
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (self->keys != NULL) {
        memcpy(fresh, self->keys, (size_t)self->count * SCHED);
        wipe(self->keys, (size_t)self->capacity * SCHED); /* no stale copy of the keys */
        PyMem_Free(self->keys);
    }
    self->keys = fresh;
    self->capacity = cap;
    return 0;
}

static PyObject *keyset_add(KeySet *self, PyObject *arg)
{
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE) < 0)
        return NULL;
    if (key.len != 16) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "an IRK must be 16 bytes");
        return NULL;
    }
    if (self->count == self->capacity
        && resize(self, self->capacity ? self->capacity * 2 : 64) < 0) {
        PyBuffer_Release(&key);
        return NULL;
    }
    expand_key((const uint8_t *)key.buf, self->keys + (size_t)self->count * SCHED);
    PyBuffer_Release(&key);
    return PyLong_FromSsize_t(self->count++);
}

static PyObject *keyset_reserve(KeySet *self, PyObject *arg)
{
    Py_ssize_t want = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (want == -1 && PyErr_Occurred())
        return NULL;
    /* Grow by at least a quarter: contacts enrolled one at a time, or a cold start's pages
       of 128, must not copy the whole buffer at every call (about 9 ms at 50k keys). */
    if (want > self->capacity) {
        Py_ssize_t grown = self->capacity + self->capacity / 4;
        if (resize(self, want > grown ? want : grown) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *keyset_remove(KeySet *self, PyObject *arg)
{
    Py_ssize_t index = PyNumber_AsSsize_t(arg, PyExc_IndexError);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= self->count) {
        PyErr_SetString(PyExc_IndexError, "KeySet index out of range");
        return NULL;
    }
    Py_ssize_t last = self->count - 1;
    if (index != last)
        memcpy(self->keys + (size_t)index * SCHED, self->keys + (size_t)last * SCHED, SCHED);
    wipe(self->keys + (size_t)last * SCHED, SCHED);
    self->count = last;
    Py_RETURN_NONE;
}

static PyObject *keyset_clear(KeySet *self, PyObject *Py_UNUSED(ignored))
{
    if (self->keys != NULL) {
        wipe(self->keys, (size_t)self->capacity * SCHED);
        PyMem_Free(self->keys);
    }
    self->keys = NULL;
    self->count = self->capacity = 0;
    Py_RETURN_NONE;
}

static int get3(PyObject *obj, const char *what, uint8_t out[3])
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return -1;
    if (view.len != 3) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "%s must be 3 bytes", what);
        return -1;
    }
    memcpy(out, view.buf, 3);
    PyBuffer_Release(&view);
    return 0;
}

static PyObject *keyset_find(KeySet *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"prand", "hash", "start", "stop", NULL};
    PyObject *prand_obj, *hash_obj;
    Py_ssize_t start = 0, stop = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|nn:find", kwlist, &prand_obj, &hash_obj,
                                     &start, &stop))
        return NULL;
    uint8_t prand[3], hash[3];
    if (get3(prand_obj, "prand", prand) < 0 || get3(hash_obj, "hash", hash) < 0)
        return NULL;
    if (start < 0)
        start = 0;
    if (stop > self->count)
        stop = self->count;
    uint8_t block[16] = {0};
    memcpy(block + 13, prand, 3);
    uint32_t want = ((uint32_t)hash[0] << 16) | ((uint32_t)hash[1] << 8) | hash[2];
    Py_ssize_t found = -1;
#ifdef HAVE_NI_CODE
    if (self->hardware) {
        if (start < stop)
            found = find_ni(self->keys, start, stop, block, want);
        return PyLong_FromSsize_t(found);
    }
#endif
    for (Py_ssize_t i = start; i < stop; i++) {
        if (tail_portable(self->keys + (size_t)i * SCHED, block) == want) {
            found = i;
            break;
        }
    }
    return PyLong_FromSsize_t(found);
}

static PyObject *keyset_match(KeySet *self, PyObject *args)
{
    Py_ssize_t index;
    Py_buffer blocks, hashes;
    if (!PyArg_ParseTuple(args, "ny*y*:match", &index, &blocks, &hashes))
        return NULL;
    PyObject *out = NULL;
    if (index < 0 || index >= self->count) {
        PyErr_SetString(PyExc_IndexError, "KeySet index out of range");
        goto done;
    }
    if (blocks.len % 16 != 0 || hashes.len != blocks.len / 16 * 3) {
        PyErr_SetString(PyExc_ValueError, "blocks must be 16 bytes and hashes 3 bytes each");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    const uint8_t *k = self->keys + (size_t)index * SCHED;
    const uint8_t *b = blocks.buf, *h = hashes.buf;
    Py_ssize_t count = blocks.len / 16;
#ifdef HAVE_NI_CODE
    if (self->hardware) {
        if (match_ni(k, b, h, count, out) < 0)
            Py_CLEAR(out);
        goto done;
    }
#endif
    for (Py_ssize_t n = 0; n < count; n++) {
        const uint8_t *hn = h + 3 * n;
        if (tail_portable(k, b + 16 * n)
            == (((uint32_t)hn[0] << 16) | ((uint32_t)hn[1] << 8) | hn[2])) {
            PyObject *slot = PyLong_FromSsize_t(n);
            if (slot == NULL || PyList_Append(out, slot) < 0) {
                Py_XDECREF(slot);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(slot);
        }
    }
done:
    PyBuffer_Release(&blocks);
    PyBuffer_Release(&hashes);
    return out;
}

static PyObject *keyset_get_backend(KeySet *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(self->hardware ? "aes-ni" : "portable");
}

static PyObject *keyset_get_nbytes(KeySet *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->capacity * SCHED);
}

static PyMethodDef keyset_methods[] = {
    {"add", (PyCFunction)keyset_add, METH_O,
     "add(irk) -> index: append a 16-byte IRK (most significant byte first)."},
    {"reserve", (PyCFunction)keyset_reserve, METH_O,
     "reserve(count): room for count keys in all (at least a quarter more than now), so a bulk load allocates once and small additions rarely."},
    {"remove", (PyCFunction)keyset_remove, METH_O,
     "remove(index): drop a key; the last key moves into its index."},
    {"clear", (PyCFunction)keyset_clear, METH_NOARGS, "clear(): drop every key."},
    {"find", (PyCFunction)(void (*)(void))keyset_find, METH_VARARGS | METH_KEYWORDS,
     "find(prand, hash, start=0, stop=len) -> index or -1: the first key in [start, stop) "
     "with ah(key, prand) == hash (3 bytes each)."},
    {"match", (PyCFunction)keyset_match, METH_VARARGS,
     "match(index, blocks, hashes) -> list of n: the 16-byte blocks whose AES under key "
     "index ends in the n-th 3-byte hash."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef keyset_getset[] = {
    {"backend", (getter)keyset_get_backend, NULL, "'aes-ni' or 'portable'", NULL},
    {"nbytes", (getter)keyset_get_nbytes, NULL, "bytes allocated for key schedules", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods keyset_as_sequence = {
    .sq_length = (lenfunc)keyset_len,
};

static PyTypeObject KeySetType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "hallway._irkscan.KeySet",
    .tp_doc = PyDoc_STR("IRKs' AES-128 key schedules in one buffer; see the module docstring."),
    .tp_basicsize = sizeof(KeySet),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)keyset_init,
    .tp_dealloc = (destructor)keyset_dealloc,
    .tp_repr = (reprfunc)keyset_repr,
    .tp_methods = keyset_methods,
    .tp_getset = keyset_getset,
    .tp_as_sequence = &keyset_as_sequence,
};

static struct PyModuleDef irkscan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hallway._irkscan",
    .m_doc = PyDoc_STR("IRK trials against many keys in C (AES-NI when the CPU has it)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__irkscan(void)
{
    build_tables();
#ifdef HAVE_NI_CODE
    cpu_has_aesni = detect_aesni();
#endif
    if (PyType_Ready(&KeySetType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&irkscan_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&KeySetType);
    if (PyModule_AddObject(m, "KeySet", (PyObject *)&KeySetType) < 0) {
        Py_DECREF(&KeySetType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "HARDWARE_AES", cpu_has_aesni) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
