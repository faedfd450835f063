// Values cross the API as bytes. A string is taken as UTF-8 text: protobufjs would read a string in a bytes field
// as base64, so every value is turned into a Buffer here before it reaches a message.

/** Bytes as the API accepts them; a string is sent as its UTF-8 encoding. */
export type Bytes = Buffer | Uint8Array | string;

/** `value` as a Buffer (UTF-8 for a string; no copy for a Uint8Array). Throws a TypeError for anything else. */
export function toBuffer(value: Bytes): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`a value must be a Buffer, Uint8Array or string, not ${value === null ? 'null' : typeof value}`);
}
