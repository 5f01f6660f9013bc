/**
 * The Lua scripts that make an epoch visible. Each runs atomically in Redis, so a replicator killed at
 * any instruction leaves the image at the previous committed epoch or the new one, never a mix; with
 * AOF on, Redis logs a script's effects as one MULTI/EXEC, which a truncated AOF drops whole.
 * The scripts touch page keys they compute themselves; all carry the VM's hash tag, so they live in
 * the same Redis Cluster slot as the declared keys.
 */

/**
 * Applies a staged incremental epoch: RENAMEs its staged pages into place (no page bytes are copied,
 * and the AOF logs one short RENAME per page), deletes the pages it marks zero, updates the page hashes
 * and meta.
 * KEYS: meta, hashes, stagedHashes, fence, asm, stagedBatches
 * ARGV: generation, previous epoch, new epoch, page key prefix, staged page key prefix, number of
 *       batches, then meta field/value pairs
 * Returns OK, ALREADY (this epoch is applied), FENCED, or CONFLICT <why>.
 */
export const APPLY_EPOCH_LUA = `
local meta, hkey, shkey, fence, asm, sbkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('EXISTS', fence) == 1 then return 'FENCED' end
local cur = redis.call('HMGET', meta, 'generation', 'epoch', 'state')
if cur[1] == ARGV[1] and cur[2] == ARGV[3] then return 'ALREADY' end
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] or cur[3] ~= 'ok' then
  return 'CONFLICT ' .. tostring(cur[1]) .. ' ' .. tostring(cur[2]) .. ' ' .. tostring(cur[3])
end
-- Staging writes may fail one by one: check that everything is there before changing anything
-- (a RENAME of a missing key would stop the script half-way).
local batches = redis.call('HLEN', sbkey)
if batches ~= tonumber(ARGV[6]) then return 'CONFLICT ' .. batches .. ' of ' .. ARGV[6] .. ' batches are staged' end
local pre, spre = ARGV[4], ARGV[5]
local sh = redis.call('HGETALL', shkey)
-- Each staged key is built once, and EXISTS counts them 4000 at a time (an EXISTS per page made the
-- script 0-15% slower); only a failed count looks for the missing page, to name it.
local staged, set, del = {}, {}, {}
for i = 1, #sh, 2 do
  if sh[i + 1] == '' then
    del[#del + 1] = sh[i]
  else
    staged[#staged + 1] = spre .. sh[i]
    set[#set + 1] = sh[i]
    set[#set + 1] = sh[i + 1]
  end
end
local present = 0
for i = 1, #staged, 4000 do present = present + redis.call('EXISTS', unpack(staged, i, math.min(i + 3999, #staged))) end
if present ~= #staged then
  for i = 1, #staged do
    if redis.call('EXISTS', staged[i]) == 0 then return 'CONFLICT page ' .. set[2 * i - 1] .. ' is not staged' end
  end
  return 'CONFLICT ' .. (#staged - present) .. ' staged pages are missing'
end
for i = 1, #del do redis.call('DEL', pre .. del[i], spre .. del[i]) end
for i = 1, #staged do redis.call('RENAME', staged[i], pre .. set[2 * i - 1]) end
-- Page hashes in a few large HSET/HDEL calls (each call is one command in the AOF, not one per page).
for i = 1, #set, 4000 do redis.call('HSET', hkey, unpack(set, i, math.min(i + 3999, #set))) end
for i = 1, #del, 4000 do redis.call('HDEL', hkey, unpack(del, i, math.min(i + 3999, #del))) end
redis.call('DEL', shkey, sbkey, asm)
for i = 7, #ARGV, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
return 'OK'
`;

/**
 * Makes a baseline (written into its generation's own keys) the image, and drops the tombstone of a
 * `standby forget` before it (a loss of this new image must not read as that forget).
 * KEYS: meta, fence, asm, forgotten
 * ARGV: generation, then meta field/value pairs
 * Returns OK, ALREADY, FENCED, or CONFLICT <current generation>.
 */
export const COMMIT_BASELINE_LUA = `
local meta, fence, asm, forgotten = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', fence) == 1 then return 'FENCED' end
local g = redis.call('HGET', meta, 'generation')
if g == ARGV[1] and redis.call('HGET', meta, 'state') == 'ok' then return 'ALREADY' end
if g and tonumber(g) >= tonumber(ARGV[1]) then return 'CONFLICT ' .. g end
redis.call('DEL', asm, forgotten)
redis.call('HDEL', meta, 'staleReason')
for i = 2, #ARGV, 2 do redis.call('HSET', meta, ARGV[i], ARGV[i + 1]) end
return 'OK'
`;

/**
 * Marks the image stale, but only if the VM is still in the state the caller judged from: a
 * compare-and-set, so a replicator that found a record out of place cannot mark an image that another
 * member (a rebalance overlaps two for a moment) has moved on since. Also deletes the assembly record.
 * A VM without an image gets no mark (nothing to distrust; junk VM ids would leave records for good).
 * KEYS: meta, asm
 * ARGV: expected image generation ('' = no image), epoch, state (ok|stale); expected assembly
 *       generation ('' = none), epoch, nextSeq; the reason
 * Returns OK or CHANGED.
 */
export const MARK_STALE_LUA = `
local m = redis.call('HMGET', KEYS[1], 'generation', 'epoch', 'state')
if m[1] then
  local state = 'stale'
  if m[3] == 'ok' then state = 'ok' end
  if m[1] ~= ARGV[1] or m[2] ~= ARGV[2] or state ~= ARGV[3] then return 'CHANGED' end
elseif ARGV[1] ~= '' then return 'CHANGED' end
local a = redis.call('HGET', KEYS[2], 'json')
if a then
  local j = cjson.decode(a)
  if ARGV[4] == '' or j.generation ~= tonumber(ARGV[4]) or j.epoch ~= tonumber(ARGV[5]) or j.nextSeq ~= tonumber(ARGV[6]) then return 'CHANGED' end
elseif ARGV[4] ~= '' then return 'CHANGED' end
redis.call('DEL', KEYS[2])
if m[1] then redis.call('HSET', KEYS[1], 'state', 'stale', 'staleReason', ARGV[7]) end
return 'OK'
`;

/**
 * One step of a scrub of the live image: the page keys behind up to COUNT fields of its page-hash
 * table must exist (every apply script writes a page key and its hash together, so a hash without its
 * page is a page Redis lost: evicted, deleted, or a partial restore).
 * KEYS: meta, hashes, fence; ARGV: generation, page key prefix, HSCAN cursor, count.
 * Returns {next cursor, pages missing, up to 16 missing fields, fields checked}, or {'0', -1} when
 * meta's generation is no longer ARGV[1], the image is stale, or fenced (a restore reads it, or
 * `standby forget` deletes it: the scrub stops, and the next pass looks again).
 */
export const MISSING_PAGES_LUA = `
local m = redis.call('HMGET', KEYS[1], 'generation', 'state')
if m[1] ~= ARGV[1] or m[2] ~= 'ok' or redis.call('EXISTS', KEYS[3]) == 1 then return {'0', -1} end
local res = redis.call('HSCAN', KEYS[2], ARGV[3], 'COUNT', ARGV[4])
local kv = res[2]
local missing, first = 0, {}
for i = 1, #kv, 2 do
  if redis.call('EXISTS', ARGV[2] .. kv[i]) == 0 then
    missing = missing + 1
    if #first < 16 then first[#first + 1] = kv[i] end
  end
end
return {res[1], missing, first, #kv / 2}
`;

/** KEYS: fence; ARGV: token, ttl ms. Extends the fence if the token holds it; returns 1, else 0. */
export const FENCE_REFRESH_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`;

/**
 * KEYS: run claim; ARGV: token, ttl ms. Extends the claim if the token holds it (1); takes it again
 * if nobody does (2: it expired while Redis could not be reached, or it was deleted by hand);
 * returns 0 when someone else holds it.
 */
export const RUN_CLAIM_REFRESH_LUA = `
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0
`;

/** KEYS: fence or run claim; ARGV: token. Deletes the key if the token holds it. */
export const FENCE_RELEASE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * Zeroes the pages a baseline being assembled marks zero. A fresh generation starts all zero, so only
 * pages this baseline already wrote with data need it, and exactly those have a field in the hash table
 * (HDEL says which): nothing else is touched, so a sparse image stays sparse and the AOF small.
 * The work is bounded by the smaller of the pages marked and the pages the generation holds: when the
 * ranges cover more pages than the hash table has fields, the script walks the table (HSCAN) and
 * finds the marked pages among them instead of probing every marked page. (It probed every page up to
 * the highest one written: three records of a few bytes held Redis for 43 s.)
 * KEYS: hashes; ARGV: page key prefix, then (slot, first page, pages) per range.
 */
export const ZERO_BASELINE_PAGES_LUA = `
local prefix = ARGV[1]
local ranges = {}
local total = 0
for i = 2, #ARGV, 3 do
  local slot, first, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local list = ranges[slot]
  if not list then list = {} ranges[slot] = list end
  list[#list + 1] = { first, first + n - 1 }
  total = total + n
end
local function drop(f)
  if redis.call('HDEL', KEYS[1], f) == 1 then redis.call('DEL', prefix .. f) end
end
if total <= redis.call('HLEN', KEYS[1]) then
  for slot, list in pairs(ranges) do
    for _, r in ipairs(list) do
      for p = r[1], r[2] do drop(slot .. ':' .. p) end
    end
  end
  return 'OK'
end
-- Per slot: the ranges sorted and merged, for a binary search per field.
for slot, list in pairs(ranges) do
  table.sort(list, function(a, b) return a[1] < b[1] end)
  local merged = {}
  for _, r in ipairs(list) do
    local last = merged[#merged]
    if last and r[1] <= last[2] + 1 then
      if r[2] > last[2] then last[2] = r[2] end
    else
      merged[#merged + 1] = { r[1], r[2] }
    end
  end
  ranges[slot] = merged
end
local marked = {}
local cursor = '0'
repeat
  local res = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 1000)
  cursor = res[1]
  local kv = res[2]
  for j = 1, #kv, 2 do
    local f = kv[j]
    local c = string.find(f, ':', 1, true)
    local list = c and ranges[string.sub(f, 1, c - 1)]
    if list then
      local p = tonumber(string.sub(f, c + 1))
      local lo, hi = 1, #list
      while lo <= hi do
        local mid = math.floor((lo + hi) / 2)
        if list[mid][1] <= p then lo = mid + 1 else hi = mid - 1 end
      end
      if p and hi >= 1 and p <= list[hi][2] then marked[#marked + 1] = f end
    end
  end
until cursor == '0'
for _, f in ipairs(marked) do drop(f) end
return 'OK'
`;
