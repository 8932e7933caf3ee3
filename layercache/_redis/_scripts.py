"""The Lua scripts that keep values and the tag index consistent in Redis.

Layout under a stack's prefix ``P`` (see docs/redis.md):

- ``P v:<key>``  the value (an envelope), with the entry's TTL;
- ``P t:<tag>``  a set of the keys carrying the tag; it lives as long as its longest-
  lived member (or forever if one never expires), so it never outlasts its entries by
  more than that;
- ``P k:<key>``  a set of the key's tags, with the value's TTL, so an overwrite or a
  delete can take the key out of every tag set it was in.

Each script is atomic, so a concurrent reader never sees a value without its index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ._connection import Command


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def evalsha(self, keys: list[str], args: list[str | bytes | int]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: list[str], args: list[str | bytes | int]) -> Command:
        return ("EVAL", self.source, len(keys), *keys, *args)


# KEYS: value key, key-tags key, tag-set keys...   ARGV: envelope, ttl ms (0 = none),
# user key, tag-set prefix, value prefix, tags...
# Each tag set also sheds up to two members whose values are gone (expired): writes keep
# a busy tag's set alive, so without this it would collect every key it ever held.
# The SET comes first: Redis checks maxmemory only at a script's first write, and only
# if that write may use memory; starting with SREM/DEL would slip past the limit.
WRITE = Script("""
local vkey, kkey = KEYS[1], KEYS[2]
local ttl, key, tprefix, vprefix = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
if ttl > 0 then
  redis.call('SET', vkey, ARGV[1], 'PX', ttl)
else
  redis.call('SET', vkey, ARGV[1])
end
for _, old in ipairs(redis.call('SMEMBERS', kkey)) do
  redis.call('SREM', tprefix .. old, key)
end
redis.call('DEL', kkey)
for i = 3, #KEYS do
  local tkey = KEYS[i]
  local existed = redis.call('EXISTS', tkey)
  local left = redis.call('PTTL', tkey)
  for _, member in ipairs(redis.call('SRANDMEMBER', tkey, 2)) do
    if redis.call('EXISTS', vprefix .. member) == 0 then
      redis.call('SREM', tkey, member)
    end
  end
  redis.call('SADD', tkey, key)
  redis.call('SADD', kkey, ARGV[i + 3])
  if ttl == 0 then
    redis.call('PERSIST', tkey)
  elseif existed == 0 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', tkey, ttl)
  end
end
if #KEYS > 2 and ttl > 0 then
  redis.call('PEXPIRE', kkey, ttl)
end
return 1
""")

# KEYS: value key 1, key-tags key 1, value key 2, ...   ARGV: tag-set prefix, user keys...
DELETE = Script("""
local tprefix = ARGV[1]
local removed = 0
for i = 2, #ARGV do
  local key, vkey, kkey = ARGV[i], KEYS[2 * i - 3], KEYS[2 * i - 2]
  for _, tag in ipairs(redis.call('SMEMBERS', kkey)) do
    redis.call('SREM', tprefix .. tag, key)
  end
  redis.call('DEL', kkey)
  removed = removed + redis.call('DEL', vkey)
end
return removed
""")

# KEYS: the tag set.   ARGV: tag-set prefix, value prefix, key-tags prefix, the tag.
# Returns the keys whose values it removed.
INVALIDATE_TAG = Script("""
local tprefix, vprefix, kprefix, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local removed = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local kkey = kprefix .. key
  for _, other in ipairs(redis.call('SMEMBERS', kkey)) do
    if other ~= tag then
      redis.call('SREM', tprefix .. other, key)
    end
  end
  redis.call('DEL', kkey)
  if redis.call('DEL', vprefix .. key) == 1 then
    removed[#removed + 1] = key
  end
end
redis.call('DEL', KEYS[1])
return removed
""")

SCRIPTS = (WRITE, DELETE, INVALIDATE_TAG)
