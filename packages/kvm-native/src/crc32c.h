#ifndef CKPT_CRC32C_H
#define CKPT_CRC32C_H
#include <stddef.h>
#include <stdint.h>

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78; "123456789" -> 0xE3069283), as Kafka's record
 * batches carry it. Continues from `crc` (0 to start). Uses the SSE4.2 crc32 instruction when the CPU has
 * it, else an 8-table (slicing-by-8) loop. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

/* The same through the table loop whatever the CPU has (tests compare the two). */
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t len);

/* "sse4.2" or "table": which implementation crc32c() uses on this CPU. */
const char *crc32c_impl(void);

#endif
