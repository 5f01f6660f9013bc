/*
 * kafka-mock: runs librdkafka's mock Kafka cluster (real TCP listeners on 127.0.0.1 speaking the
 * Kafka protocol) as a process, for tests and the embedded default of the pipeline and the drill.
 *
 *   kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...
 *
 * Prints "READY <bootstrap servers>" on stdout, then reads one command per line on stdin and answers
 * each with one line, "OK" or "ERR <reason>":
 *   topic NAME PARTITIONS [REPLICATION]   create a topic (the mock has no CreateTopics API)
 *   down ID | up ID                       take a broker down / bring it back (-1: all brokers)
 *   rtt ID MS                             add round-trip delay to a broker's responses
 *   errors APIKEY ERR [ERR...]            the next requests of that API fail with these error codes
 *                                         (-195 = _TRANSPORT: the broker disconnects the client)
 *   clear APIKEY                          drop pending injected errors for that API
 *   topic-error NAME ERR                  metadata requests for that topic answer ERR (0 clears it);
 *                                         3 = UNKNOWN_TOPIC_OR_PART stands in for a missing topic, as the
 *                                         mock creates any topic a client asks about
 *   quit                                  stop
 * It also stops when stdin closes (its parent went away) or on SIGTERM/SIGINT.
 * Limits of the mock (librdkafka 2.0): partitions keep 5 MiB / 100000 batches; no idempotent or
 * transactional producer support that kafkajs can use; no CreateTopics.
 * Its retention trims whole record batches, oldest first, before it links the new one, and a trim
 * that empties the log moves the log start past the new batch too: when the newest batch and the one
 * before it hold more than 5 MiB together, the new batch is gone as soon as it is acknowledged (seen
 * with 4 MiB produce requests: every batch after the first was lost, and consumers got
 * OFFSET_OUT_OF_RANGE). Keep produce requests to about 1 MiB against it.
 * CKPT_KAFKA_MOCK_LOG=FILE writes the mock's debug log (appends, trims, offsets) to FILE.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fputc('\n', stdout);
  fflush(stdout);
}

static int parse_int(const char *s, long min, long max, long *out) {
  if (!s || !*s) return -1;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < min || v > max) return -1;
  *out = v;
  return 0;
}

static int create_topic(rd_kafka_mock_cluster_t *mc, const char *name, long parts, long rf, char *err, size_t errlen) {
  rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, name, (int)parts, (int)rf);
  if (e) {
    snprintf(err, errlen, "cannot create topic %s: %s", name, rd_kafka_err2str(e));
    return -1;
  }
  return 0;
}

static void usage(FILE *f) {
  fprintf(f, "usage: kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...\n"
             "Runs librdkafka's mock Kafka cluster on 127.0.0.1; commands on stdin (see the source header).\n");
}

int main(int argc, char **argv) {
  long brokers = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(argv[i], "--brokers") && i + 1 < argc) {
      if (parse_int(argv[++i], 1, 16, &brokers) < 0) {
        fprintf(stderr, "kafka-mock: --brokers takes 1..16, got %s\n", argv[i]);
        return 2;
      }
    } else if (!strcmp(argv[i], "--topic") && i + 1 < argc) {
      i++; /* created below, once the cluster exists */
    } else {
      fprintf(stderr, "kafka-mock: unknown argument %s\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }

  char errstr[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  /* CKPT_KAFKA_MOCK_LOG=FILE: the mock's own debug log (appends, trims, offsets) goes to FILE. */
  const char *debug_log = getenv("CKPT_KAFKA_MOCK_LOG");
  if (debug_log && *debug_log) {
    if (!freopen(debug_log, "a", stderr)) {
      fprintf(stdout, "kafka-mock: cannot open %s for the debug log\n", debug_log);
      return 1;
    }
    if (rd_kafka_conf_set(conf, "debug", "mock", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
      fprintf(stderr, "kafka-mock: %s\n", errstr);
      return 1;
    }
  }
  if (rd_kafka_conf_set(conf, "log_level", debug_log && *debug_log ? "7" : "3", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
    fprintf(stderr, "kafka-mock: %s\n", errstr);
    return 1;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!rk) {
    fprintf(stderr, "kafka-mock: cannot create the librdkafka handle: %s\n", errstr);
    return 1;
  }
  rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
  if (!mc) {
    fprintf(stderr, "kafka-mock: cannot start the mock cluster\n");
    rd_kafka_destroy(rk);
    return 1;
  }
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--topic") || i + 1 >= argc) continue;
    char name[256];
    const char *spec = argv[++i];
    const char *colon = strrchr(spec, ':');
    long parts = 1;
    if (!colon || (size_t)(colon - spec) >= sizeof name || colon == spec || parse_int(colon + 1, 1, 10000, &parts) < 0) {
      fprintf(stderr, "kafka-mock: --topic takes NAME:PARTITIONS, got %s\n", spec);
      return 2;
    }
    memcpy(name, spec, (size_t)(colon - spec));
    name[colon - spec] = 0;
    if (create_topic(mc, name, parts, brokers < 3 ? brokers : 3, errstr, sizeof errstr) < 0) {
      fprintf(stderr, "kafka-mock: %s\n", errstr);
      return 1;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  reply("READY %s", rd_kafka_mock_cluster_bootstraps(mc));

  char line[4096];
  while (fgets(line, sizeof line, stdin)) {
    char *save = NULL;
    char *cmd = strtok_r(line, " \t\r\n", &save);
    if (!cmd) continue;
    char *a1 = strtok_r(NULL, " \t\r\n", &save);
    char *a2 = strtok_r(NULL, " \t\r\n", &save);
    long x, y;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (!strcmp(cmd, "quit")) {
      reply("OK");
      break;
    } else if (!strcmp(cmd, "topic")) {
      char *a3 = strtok_r(NULL, " \t\r\n", &save);
      long rf = 1;
      if (!a1 || parse_int(a2, 1, 10000, &x) < 0 || (a3 && parse_int(a3, 1, brokers, &rf) < 0)) {
        reply("ERR usage: topic NAME PARTITIONS [REPLICATION 1..%ld]", brokers);
        continue;
      }
      if (create_topic(mc, a1, x, rf, errstr, sizeof errstr) < 0) reply("ERR %s", errstr);
      else reply("OK");
      continue;
    } else if (!strcmp(cmd, "down") || !strcmp(cmd, "up")) {
      if (parse_int(a1, -1, brokers, &x) < 0) {
        reply("ERR usage: %s BROKER_ID (1..%ld, or -1 for all)", cmd, brokers);
        continue;
      }
      e = !strcmp(cmd, "down") ? rd_kafka_mock_broker_set_down(mc, (int32_t)x) : rd_kafka_mock_broker_set_up(mc, (int32_t)x);
    } else if (!strcmp(cmd, "rtt")) {
      if (parse_int(a1, -1, brokers, &x) < 0 || parse_int(a2, 0, 600000, &y) < 0) {
        reply("ERR usage: rtt BROKER_ID MS");
        continue;
      }
      e = rd_kafka_mock_broker_set_rtt(mc, (int32_t)x, (int)y);
    } else if (!strcmp(cmd, "errors")) {
      rd_kafka_resp_err_t errs[64];
      size_t n = 0;
      int bad = parse_int(a1, 0, 100, &x) < 0;
      for (char *t = a2; t && !bad; t = strtok_r(NULL, " \t\r\n", &save)) {
        if (n == 64 || parse_int(t, -200, 200, &y) < 0) bad = 1;
        else errs[n++] = (rd_kafka_resp_err_t)y;
      }
      if (bad || n == 0) {
        reply("ERR usage: errors APIKEY ERR [ERR...] (at most 64)");
        continue;
      }
      rd_kafka_mock_push_request_errors_array(mc, (int16_t)x, n, errs);
    } else if (!strcmp(cmd, "topic-error")) {
      if (!a1 || parse_int(a2, -200, 200, &x) < 0) {
        reply("ERR usage: topic-error NAME ERR");
        continue;
      }
      rd_kafka_mock_topic_set_error(mc, a1, (rd_kafka_resp_err_t)x);
    } else if (!strcmp(cmd, "clear")) {
      if (parse_int(a1, 0, 100, &x) < 0) {
        reply("ERR usage: clear APIKEY");
        continue;
      }
      rd_kafka_mock_clear_request_errors(mc, (int16_t)x);
    } else {
      reply("ERR unknown command %s", cmd);
      continue;
    }
    if (e) reply("ERR %s", rd_kafka_err2str(e));
    else reply("OK");
  }
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}
