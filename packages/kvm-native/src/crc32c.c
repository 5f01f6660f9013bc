/*
 * CRC-32C for Kafka record batches. kafkajs computes it in JavaScript a byte at a time (about 400 MB/s
 * here), which was the largest single cost in the harvester's process when it publishes pages; the
 * crc32 instruction does the same work at several GB/s. Nothing here is KVM-specific: it lives in the
 * native helper because that is the one C build the product has.
 */
#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "crc32c.c reads words little-endian"
#endif

#define POLY 0x82F63B78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void make_table(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
    table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++)
    for (int t = 1; t < 8; t++) table[t][n] = (table[t - 1][n] >> 8) ^ table[0][table[t - 1][n] & 0xff];
}

static uint32_t crc_table(uint32_t c, const uint8_t *p, size_t len) {
  pthread_once(&table_once, make_table);
  while (len >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
        table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--) c = table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t len) {
  uint64_t c64 = c;
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c64 = __builtin_ia32_crc32di(c64, w);
    p += 8;
    len -= 8;
  }
  c = (uint32_t)c64;
  while (len--) c = __builtin_ia32_crc32qi(c, *p++);
  return c;
}

static int have_hw(void) {
  static int cached = -1;
  if (cached < 0) cached = __builtin_cpu_supports("sse4.2") ? 1 : 0;
  return cached;
}
#else
static int have_hw(void) { return 0; }
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t len) { return crc_table(c, p, len); }
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len) {
  return have_hw() ? ~crc_hw(~crc, data, len) : ~crc_table(~crc, data, len);
}

uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len) { return ~crc_table(~crc, data, len); }

const char *crc32c_impl(void) { return have_hw() ? "sse4.2" : "table"; }
