-- Set (after helpers.lua). KEYS: value, lease, index, lease set, epoch, version floor. ARGV: payload, ttl ms,
-- versioned ("1"/"0"), header (format byte, then the version as 8 bytes big-endian), member, fresh epoch,
-- version retention ms.
--
-- A versioned write is refused when the key's version floor is higher, or when the live stored record (current
-- epoch, same header format) carries a higher version (a record written before the floor existed).
local function stored_version_is_higher(stored, epoch, header)
  if not stored or not epoch or string.sub(stored, 1, #epoch) ~= epoch then return false end
  local at = #epoch
  if #stored < at + #header or string.byte(stored, at + 1) ~= string.byte(header, 1) then return false end
  return higher(string.sub(stored, at + 2, at + #header), string.sub(header, 2))
end

local ttl, header = tonumber(ARGV[2]), ARGV[4]
local version = nil
if ARGV[3] == '1' then
  version = string.sub(header, 2)
  if version_floor_above(KEYS, version)
      or stored_version_is_higher(redis.call('GET', KEYS[1]), redis.call('GET', KEYS[5]), header) then
    return 0
  end
end
store(KEYS, ARGV[5], header, ARGV[1], ttl, ARGV[6], version, tonumber(ARGV[7]))
return 1
