//! Points on the globe: validated coordinates, great-circle distance, and geohash cells
//! for indexing events by place.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in km (the usual haversine constant).
const EARTH_RADIUS_KM: f64 = 6371.0088;
const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// Geohash precisions events are indexed at: 3 (cells ~156 km wide) for wide searches and
/// 5 (~4.9 km) for local ones.
pub const INDEXED_PRECISIONS: [usize; 2] = [3, 5];
/// Largest search radius, km: keeps a search to a few dozen precision-3 cells.
pub const MAX_RADIUS_KM: f64 = 500.0;
/// Most cells one search reads; past it the search does without the place index.
pub const MAX_CELLS: usize = 64;
/// Largest radius searched with precision-5 cells.
const FINE_RADIUS_KM: f64 = 25.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

impl Point {
    /// `None` unless -90 <= lat <= 90 and -180 <= lon <= 180 (and both finite).
    pub fn new(lat: f64, lon: f64) -> Option<Self> {
        ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
            .then_some(Self { lat, lon })
    }

    /// Great-circle distance in km (haversine).
    pub fn distance_km(self, other: Point) -> f64 {
        let (la1, la2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = la2 - la1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }

    /// The geohash of this point at `precision` characters.
    pub fn geohash(self, precision: usize) -> String {
        let (mut lat, mut lon) = ((-90.0f64, 90.0f64), (-180.0f64, 180.0f64));
        let mut out = String::with_capacity(precision);
        let (mut bits, mut value, mut even) = (0, 0usize, true);
        while out.len() < precision {
            let (range, coord) = if even {
                (&mut lon, self.lon)
            } else {
                (&mut lat, self.lat)
            };
            let mid = (range.0 + range.1) / 2.0;
            value <<= 1;
            if coord >= mid {
                value |= 1;
                range.0 = mid;
            } else {
                range.1 = mid;
            }
            even = !even;
            bits += 1;
            if bits == 5 {
                out.push(BASE32[value] as char);
                (bits, value) = (0, 0);
            }
        }
        out
    }

    /// Geohash cells (at one of [`INDEXED_PRECISIONS`]) that together cover every point
    /// within `radius_km` of this one, or `None` when that takes more than [`MAX_CELLS`]
    /// (circles near a pole): the caller then searches without the place index. Callers
    /// still check the exact distance.
    pub fn covering_cells(self, radius_km: f64) -> Option<Vec<String>> {
        let fine = (radius_km <= FINE_RADIUS_KM).then_some(5);
        fine.into_iter()
            .chain([3])
            .find_map(|precision| self.cells_at(precision, radius_km))
    }

    fn cells_at(self, precision: usize, radius_km: f64) -> Option<Vec<String>> {
        // A cell's size in degrees at this precision.
        let lon_bits = (precision * 5).div_ceil(2) as i32;
        let lat_bits = (precision * 5 / 2) as i32;
        let (cell_lat, cell_lon) = (180.0 / 2f64.powi(lat_bits), 360.0 / 2f64.powi(lon_bits));
        let dlat = (radius_km / EARTH_RADIUS_KM).to_degrees();
        let lat_lo = (self.lat - dlat).max(-90.0);
        let lat_hi = (self.lat + dlat).min(90.0);
        // Near the poles (or for circles that contain one) every longitude is in range.
        let widest = lat_lo.abs().max(lat_hi.abs()).min(89.9).to_radians().cos();
        let dlon = (dlat / widest).min(180.0);
        // Bound the work before doing it.
        let steps = ((lat_hi - lat_lo) / cell_lat + 2.0) * (2.0 * dlon / cell_lon + 2.0);
        if steps > (4 * MAX_CELLS) as f64 {
            return None;
        }
        let mut cells = std::collections::BTreeSet::new();
        let mut lat = lat_lo;
        loop {
            let mut lon = self.lon - dlon;
            loop {
                let wrapped = ((lon + 540.0) % 360.0) - 180.0;
                cells.insert(Point { lat, lon: wrapped }.geohash(precision));
                if lon >= self.lon + dlon {
                    break;
                }
                lon = (lon + cell_lon).min(self.lon + dlon);
            }
            if lat >= lat_hi {
                break;
            }
            lat = (lat + cell_lat).min(lat_hi);
        }
        (cells.len() <= MAX_CELLS).then(|| cells.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circles_near_a_pole_give_up_the_cover_quickly() {
        let started = std::time::Instant::now();
        for (lat, radius) in [(89.9, 25.0), (-89.99, 500.0), (89.0, 400.0)] {
            assert_eq!(Point::new(lat, 0.0).unwrap().covering_cells(radius), None);
        }
        // Not a speed assertion, a sanity bound: the old cover took seconds here.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn geohashes_match_the_reference_encoding() {
        // Reference values from the original geohash.org examples.
        assert_eq!(
            Point::new(57.64911, 10.40744).unwrap().geohash(11),
            "u4pruydqqvj"
        );
        assert_eq!(Point::new(42.6, -5.6).unwrap().geohash(5), "ezs42");
        assert!(Point::new(91.0, 0.0).is_none() && Point::new(0.0, -180.5).is_none());
        assert!(Point::new(f64::NAN, 0.0).is_none());
    }

    #[test]
    fn distances_are_great_circle_km() {
        let paris = Point::new(48.8566, 2.3522).unwrap();
        let london = Point::new(51.5074, -0.1278).unwrap();
        assert!((paris.distance_km(london) - 343.5).abs() < 1.0);
    }

    #[test]
    fn covering_cells_contain_every_point_in_the_circle() {
        for (center, radius) in [
            ((48.85, 2.35), 10.0),
            ((48.85, 2.35), 300.0),
            ((0.0, 179.9), 50.0),
            ((-70.0, 0.0), 200.0),
        ] {
            let c = Point::new(center.0, center.1).unwrap();
            let cells = c.covering_cells(radius).expect("a cover");
            assert!(cells.len() <= MAX_CELLS);
            let precision = cells[0].len();
            for i in 0..36 {
                for step in 1..=4 {
                    // Points on rays out from the centre, up to the radius.
                    let d = radius * f64::from(step) / 4.0 * 0.999;
                    let bearing = f64::from(i * 10).to_radians();
                    let dr = d / EARTH_RADIUS_KM;
                    let (la, lo) = (c.lat.to_radians(), c.lon.to_radians());
                    let lat2 = (la.sin() * dr.cos() + la.cos() * dr.sin() * bearing.cos()).asin();
                    let lon2 = lo
                        + (bearing.sin() * dr.sin() * la.cos())
                            .atan2(dr.cos() - la.sin() * lat2.sin());
                    let lon2 = ((lon2.to_degrees() + 540.0) % 360.0) - 180.0;
                    let p = Point::new(lat2.to_degrees(), lon2).unwrap();
                    assert!(
                        cells.contains(&p.geohash(precision)),
                        "{p:?} of {center:?}/{radius} not covered"
                    );
                }
            }
        }
    }
}
